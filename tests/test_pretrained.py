"""Models shared the way the ecosystem does (issue 23): save_pretrained folders, load_model of a folder, a checkpoint or
a hub id, export, the model card, the bundled MNIST model, and W&B logging (offline)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistency import ConsistencyModel, EDMDenoiser, generate, load_model, make_loader
from consistency.cli.export import main as export_main
from consistency.cli.sample import main as sample_main
from tests.conftest import synthetic_images, tiny_model
from tests.test_cli import TINY, call, main_py, refused, succeeds
from tests.test_trainer import make_trainer

BUNDLED = Path(__file__).resolve().parents[1] / "consistency" / "pretrained_models"


@pytest.fixture
def run(tmp_path):
    data = torch.utils.data.TensorDataset(synthetic_images(16), torch.arange(16) % 3)
    trainer = make_trainer(make_loader(data, batch_size=8), out_dir=tmp_path / "run", model=tiny_model(num_classes=3),
                           total_steps=3)
    trainer.train()
    return trainer


def test_a_run_round_trips_through_a_folder_bit_for_bit(run, tmp_path):
    folder = run.save_pretrained(tmp_path / "folder")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    ckpt = run.out_dir / "checkpoint.pt"
    for steps in (1, 2):
        assert torch.equal(generate(load_model(folder), 6, steps=steps, seed=1),
                           generate(load_model(ckpt), 6, steps=steps, seed=1))
    config = json.loads((folder / "config.json").read_text())
    assert config["method"]["name"] == "ct" and config["sampler"] == "consistency" and config["weights"] == "ema"
    assert config["model"]["image_shape"] == [1, 8, 8] and config["model"]["num_classes"] == 3
    card = (folder / "README.md").read_text()
    assert "`--method ct`" in card and "1 step (1 network evaluation)" in card and "the sampling EMA" in card
    export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "exported"), "--weights", "model"])
    online = load_model(tmp_path / "exported")
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), run.model.parameters()))
    assert isinstance(ConsistencyModel.from_pretrained(folder), ConsistencyModel)
    with pytest.raises(ValueError, match="not a EDMDenoiser"):
        EDMDenoiser.from_pretrained(folder)


def test_a_damaged_or_foreign_folder_is_refused_in_one_line(run, tmp_path, capsys):
    good = run.save_pretrained(tmp_path / "good")

    def variant(name, change):
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        change(folder)
        return folder

    def edit_config(key, value):
        def change(folder):
            config = json.loads((folder / "config.json").read_text())
            config["model"]["net"][key] = value
            (folder / "config.json").write_text(json.dumps(config))
        return change

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    def wrapper(folder):
        config = json.loads((folder / "config.json").read_text())
        config["model"]["wrapper"] = "GAN"
        (folder / "config.json").write_text(json.dumps(config))

    cases = [
        (variant("no-config", lambda f: (f / "config.json").unlink()), "holds no config.json"),
        (variant("cut", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100])),
         "damaged or not a safetensors"),
        (variant("pickle", lambda f: torch.save({"x": Evil()}, f / "model.safetensors")), "damaged or not a safetensors"),
        (variant("shapes", edit_config("base_channels", 16)), "do not fit"),
        (variant("network", wrapper), "unknown network 'GAN'"),
    ]
    for folder, message in cases:
        proc = call(sample_main, ["--checkpoint", str(folder), "--n", "2", "--out", str(tmp_path / "s.npz")], capsys)
        assert refused(proc, message) and len(proc.stderr.strip().splitlines()) == 1, (folder.name, proc.stderr)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "s.npz").exists()


def test_every_command_line_takes_a_folder_a_checkpoint_or_a_hub_id(run, tmp_path, capsys, monkeypatch):
    folder = run.save_pretrained(tmp_path / "folder")
    outputs = {}
    for kind, source in (("checkpoint", run.out_dir / "checkpoint.pt"), ("folder", folder), ("hub", "someone/mnist")):
        if kind == "hub":  # the hub's download, as huggingface_hub would do it online
            import huggingface_hub

            monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(folder))
        out = tmp_path / f"{kind}.npz"
        succeeds(sample_main, ["--checkpoint", str(source), "--n", "4", "--steps", "2", "--out", str(out)], capsys)
        outputs[kind] = np.load(out)["images"]
    assert np.array_equal(outputs["checkpoint"], outputs["folder"]) and np.array_equal(outputs["folder"], outputs["hub"])

    def offline(repo_id, **kw):
        raise OSError("no connection")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    proc = call(sample_main, ["--checkpoint", "someone/else", "--out", str(tmp_path / "x.npz")], capsys)
    assert refused(proc, "could not be fetched from the Hugging Face Hub")


def test_weights_and_biases_logs_offline(fake_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--steps", "3", "--wandb", *TINY], capsys)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # offline, W&B keeps the history and config as protobuf records in one run-ID.wandb file (its record reader is
    # internal and moves between versions): the keys and the config's strings are stored as plain UTF-8 in it
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("loss", "lr", "images_per_s", "samples/1step", '"ict"', "mnist-cpu"):
        assert key.encode() in records, key
    grids = list((runs[0] / "files" / "media" / "images" / "samples").glob("1step_*.png"))
    assert grids and Image.open(grids[-1]).size[0] > 28  # the final sample grid, as an image
    run_id = (out / "wandb-run-id").read_text()
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--resume", "--steps", "4", "--wandb",
                       "--no-progress"], capsys)
    assert (out / "wandb-run-id").read_text() == run_id  # the resumed run continues the same W&B run
    monkeypatch.setattr("consistency.runlog.WandbLog.check_installed",
                        lambda: (_ for _ in ()).throw(ValueError('--wandb needs the wandb package: pip install '
                                                                 '"consistency-models[wandb]"')))
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "other"), "--wandb", *TINY], capsys)
    assert refused(proc, "consistency-models[wandb]")


@pytest.mark.skipif(not (BUNDLED / "mnist" / "model.safetensors").is_file(), reason="no bundled model")
def test_the_bundled_mnist_model_draws_the_digits_asked_for():
    """The model that comes with the package: its samples are read as the digit asked for at least 95% of the time
    by the MNIST yardstick's classifier (shipped beside it), on 200 samples."""
    from safetensors.torch import load_file

    from consistency.yardstick import Classifier, classifier_outputs

    assert sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file()) <= 6 * 2**20
    model = load_model("pretrained/mnist")
    config = json.loads((BUNDLED / "mnist" / "config.json").read_text())
    classifier = Classifier()
    classifier.load_state_dict({k: v.float() for k, v in load_file(BUNDLED / "yardstick-mnist.safetensors").items()})
    labels = torch.arange(200) % 10
    steps, w = config["default_steps"][0], config.get("default_guidance")
    images = generate(model, 200, steps=steps, class_labels=labels, seed=0, guidance=w)
    _, probs = classifier_outputs(classifier.eval(), ((images + 1) * 127.5).round().to(torch.uint8))
    assert (probs.argmax(1) == labels).float().mean() >= 0.95
