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

    def edit(*keys, value=None, delete=False):  # a hand-edited config.json: the value at config[k1][k2]...
        def change(folder):
            config = json.loads((folder / "config.json").read_text())
            inner = config
            for key in keys[:-1]:
                inner = inner[key]
            if delete:
                del inner[keys[-1]]
            else:
                inner[keys[-1]] = value
            (folder / "config.json").write_text(json.dumps(config))
        return change

    edited = [  # (what, the change, the message): each once a traceback, an allocation of gigabytes, or accepted
        ("method-str", edit("method", value="ict"), "'method' is 'ict', not a JSON object"),
        ("training-str", edit("training", value="x"), "'training' is 'x', not a JSON object"),
        ("model-list", edit("model", value=[1, 2]), "'model' is [1, 2], not a JSON object"),
        ("negative-shape", edit("model", "image_shape", value=[1, -8, 8]), "image_shape's height is -8"),
        ("huge-shape", edit("model", "image_shape", value=[1, 100000, 100000]), "image_shape's height is 100000"),
        ("huge-width", edit("model", "net", "base_channels", value=10 ** 9), "net.base_channels is 1000000000"),
        ("classes-negative", edit("model", "num_classes", value=-3), "num_classes is -3"),
        ("classes-text", edit("model", "num_classes", value="ten"), "num_classes is 'ten'"),
        ("sigma-text", edit("model", "sigma_data", value="0.5"), "sigma_data is '0.5'"),
        ("sigma-negative", edit("model", "sigma_min", value=-1), "sigma_min is -1"),
        ("sigma-max-zero", edit("model", "sigma_max", value=0), "sigma_max is 0"),
        ("fewer-classes", lambda f: (edit("model", "num_classes", value=2)(f), edit("model", "net", "num_classes",
                                                                               value=2)(f)), "do not fit"),
        ("short-class-names", edit("classes", value=["a"]), "'classes' has 1 entries for a model of 3 classes"),
        ("guidance-nan", edit("default_guidance", value=float("nan")), "'default_guidance' is nan"),
        ("steps-zero", edit("default_steps", value=[0]), "'default_steps' is [0]"),
        ("step-text", edit("training", "step", value="abc"), "'training.step' is 'abc'"),
        ("rho-text", edit("method", "rho", value="7"), "'method.rho' is '7'"),
        ("method-sigma-negative", edit("method", "sigma_min", value=-1), "'method.sigma_min' is -1"),
        ("method-rho-zero", edit("method", "rho", value=0), "'method.rho' is 0: expected a finite number > 0"),
    ]
    cases = [(variant(name, change), message) for name, change, message in edited] + [
        (variant("no-config", lambda f: (f / "config.json").unlink()), "holds no config.json"),
        (variant("cut", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100])),
         "damaged or not a safetensors"),
        (variant("pickle", lambda f: torch.save({"x": Evil()}, f / "model.safetensors")), "damaged or not a safetensors"),
        (variant("shapes", edit_config("base_channels", 16)), "do not fit"),
        (variant("network", wrapper), "unknown network 'GAN'"),
    ]
    unnamed = variant("no-classes", edit("classes", delete=True))  # the class names are optional: it still loads
    succeeds(sample_main, ["--checkpoint", str(unnamed), "--n", "2", "--out", str(tmp_path / "unnamed.npz")], capsys)
    for folder, message in cases:
        proc = call(sample_main, ["--checkpoint", str(folder), "--n", "2", "--out", str(tmp_path / "s.npz")], capsys)
        assert refused(proc, message) and len(proc.stderr.strip().splitlines()) == 1, (folder.name, proc.stderr)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "s.npz").exists()


def test_a_folder_loads_without_the_safetensors_package(run, tmp_path, monkeypatch):
    """The bundled model must load right after `pip install` (no [hub] extra): the library's own reader gives the
    same tensors as safetensors', and refuses a cut or lying file as damaged."""
    import sys

    from consistency.pretrained import load_safetensors

    folder = run.save_pretrained(tmp_path / "folder")
    weights = folder / "model.safetensors"
    expected, expected_meta = load_safetensors(weights, metadata=True)  # safetensors' (installed with the test extra)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed: import raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    ours, meta = load_safetensors(weights, metadata=True)
    assert ours.keys() == expected.keys() and meta == expected_meta
    assert all(ours[k].dtype == expected[k].dtype and torch.equal(ours[k], expected[k]) for k in expected)
    assert torch.equal(generate(load_model(folder), 4, steps=2, seed=3),
                       generate(load_model(run.out_dir / "checkpoint.pt"), 4, steps=2, seed=3))
    data = weights.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10 ** 6  # a tensor said to reach past the file's end
    lying = json.dumps(header).encode()
    weights.write_bytes(len(lying).to_bytes(8, "little") + lying + data[8 + size:])
    with pytest.raises(ValueError, match="damaged or not a safetensors"):
        load_model(folder)


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


def test_what_every_method_writes_passes_the_folder_check():
    """Each method's config() (what config.json records) is what read_folder accepts: sCM, ECT and MeanFlow start
    their range at sigma_min = 0, a guided CD student records guidance_min / guidance_max (a check once refused 0)."""
    from consistency.methods import METHODS
    from consistency.pretrained import config_problem
    from tests.conftest import tiny_unet

    teacher = EDMDenoiser(tiny_unet(num_classes=3, null_class=True, time_scale=1.0))
    methods = [cls(teacher) if name in ("cd", "scd") else cls() for name, cls in METHODS.items()]
    methods.append(METHODS["cd"](teacher, guidance=(0.0, 4.0)))
    configs = [m.config() for m in methods]
    assert {c["sigma_min"] for c in configs if c["name"] in ("scm", "ect", "meanflow")} == {0.0}
    assert configs[-1]["guidance_min"] == 0.0
    for config in configs:
        assert config_problem({"model": {}, "method": config}) is None, config
