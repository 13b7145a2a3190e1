"""The scripts as a user runs them: main.py, --resume, --help, bad input, python -m consistency.cli.sample / edit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from consistency.checkpoint import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--width", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--batch-size", "8", "--no-progress",
        "--sample-every", "0", "--device", "cpu", "--no-compile"]


def run(args, cwd=ROOT, check=True, env=None):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def call(main, argv, capsys):
    """A command's main(argv) in this process (no interpreter start-up): an object like run()'s result."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:  # sys.exit("error: ...") or argparse's exit(2)
        code = exc.code if isinstance(exc.code, int) else 1
        message = "" if isinstance(exc.code, int) or exc.code is None else str(exc.code)
    else:
        message = ""
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err + message)


def main_py(argv):
    sys.path.insert(0, str(ROOT))
    from consistency.cli.train import main_guard
    from main import run as run_main

    return main_guard(run_main, argv)


def imagenet9_py(argv):
    sys.path.insert(0, str(ROOT))
    from consistency.cli.train import main_guard
    from main_imagenet9 import run as run_in9

    return main_guard(run_in9, argv)


def succeeds(main, argv, capsys):
    proc = call(main, argv, capsys)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def refused(proc, *messages):
    """A user error: non-zero exit, one line naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr
    return True


def test_an_interrupted_run_resumes_as_if_uninterrupted(fake_mnist, tmp_path, capsys):
    # EDM's loss does not depend on the run's length, so a 3-step run extended to 6 is the 6-step run, bit for bit.
    base = ["--data-root", str(fake_mnist), "--method", "edm", "--lr-schedule", "constant", *TINY]
    succeeds(main_py, [*base, "--out", str(tmp_path / "full"), "--steps", "6"], capsys)
    succeeds(main_py, [*base, "--out", str(tmp_path / "part"), "--steps", "3", "--checkpoint-every", "3"], capsys)
    # --resume alone takes the run's own settings (the method, the schedule): no flag needs repeating
    proc = run(["main.py", "--data-root", str(fake_mnist), "--out", str(tmp_path / "part"), "--resume", "--steps", "6",
                "--no-progress"])  # a real process: what a user types
    assert "Resumed from" in proc.stdout and "at step 3 of 6" in proc.stdout
    full, part = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "part"))
    assert part.step == 6 and part.method["name"] == "edm" and part.history["loss"] == full.history["loss"]
    assert all(torch.equal(full.weights["model"][k], v) for k, v in part.weights["model"].items())
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["run"]["lr_schedule"] == "constant" and config["trainer"]["total_steps"] == 6
    assert config["preset"]["name"] == "mnist-cpu" and "lr" in config["preset"]["filled"]
    assert not {"rank", "world_size", "default_steps"} & set(config["run"])
    # a finished run says how to extend it
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "part"), "--resume"], capsys)
    assert refused(proc, "is finished (step 6 of 6)", "--steps N", "--minutes M")
    # ... and --minutes extends it by that budget: the step count is fitted again and recorded in config.json
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "part"), "--resume", "--minutes", "0.05",
                       "--no-progress"], capsys)
    extended = json.loads((tmp_path / "part" / "config.json").read_text())["trainer"]["total_steps"]
    # (on a loaded machine the steps after the fit may run slower than those it timed, and the deadline comes first)
    assert extended > 6 and 6 < read_checkpoint(tmp_path / "part" / "checkpoint.pt").step <= extended

    npz = tmp_path / "s.npz"
    sample = ["consistency.cli.sample", "--checkpoint", str(tmp_path / "full" / "checkpoint.pt"), "--n", "3",
              "--steps", "2", "--device", "cpu"]
    run(["-m", *sample, "--out", str(npz), "--grid", str(tmp_path / "g.png")])  # an EDM model: its Heun sampler
    images = np.load(npz)["images"]
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.uint8 and list(np.load(npz)["labels"]) == [0, 1, 2]
    from consistency.cli.sample import main as sample_main

    succeeds(sample_main, [*sample[1:], "--out", str(tmp_path / "t.npz")], capsys)
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], images)  # seeded


def test_methods_class_conditioning_and_overwriting(fake_mnist, tmp_path, capsys):
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path), "--steps", "2", "--method", "ct", *TINY], capsys)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"]["name"] == "ct" and config["model"]["num_classes"] == 10  # conditional by default
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 2 and (tmp_path / "loss_curve.png").is_file()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path), "--steps", "2", *TINY], capsys)
    assert refused(proc, "already holds a run", "--resume", "--overwrite")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # nothing was touched
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path), "--steps", "1", "--overwrite", *TINY], capsys)
    assert read_checkpoint(tmp_path / "checkpoint.pt").step == 1

    plain = tmp_path / "unconditional"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(plain), "--steps", "2", "--no-class-conditional", *TINY], capsys)
    assert json.loads((plain / "config.json").read_text())["model"]["num_classes"] is None
    # resuming keeps the run's own model: no flag needed, and --class-conditional would be a different model
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(plain), "--steps", "3", "--resume", "--no-progress"], capsys)
    assert read_checkpoint(plain / "checkpoint.pt").step == 3
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(plain), "--steps", "4", "--resume",
                          "--class-conditional", *TINY], capsys)
    assert refused(proc, "different model")


@pytest.mark.parametrize("script", ["main.py", "main_imagenet9.py"])
def test_help_shows_the_presets(script):
    text = run([script, "--help"]).stdout
    assert f"usage: python {script}" in text and "--method" in text and "--minutes" in text
    assert "on a GPU" in text and "on a CPU" in text and "--class-conditional" in text


def test_bad_input_is_one_line_and_touches_nothing(fake_mnist, tmp_path, capsys):
    data = ["--data-root", str(fake_mnist), "--out", str(tmp_path / "o")]
    for flags, message in [
        (["--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "MNIST (train) not found"),
        ([*data, "--channel-mult", "1,x"], "comma-separated integers"),
        ([*data, "--lr", "-1"], "--lr: must be > 0"),
        ([*data, "--ema-decay", "1.5"], "must lie in [0, 1)"),
        ([*data, "--steps", "0"], "must be a positive integer"),
        ([*data, "--method", "cd", "--s1", "10"], "--method cd has no option s1"),
        ([*data, "--method", "cd"], "pass --teacher CKPT"),
        ([*data, "--method-arg", "p_mean"], "expected KEY=VALUE"),
        ([*data, "--resume"], "does not exist"),
    ]:
        proc = call(main_py, [*flags, *TINY], capsys)
        assert refused(proc, message), flags
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()
    # and as a real process: one line on stderr, exit status 1
    proc = run(["main.py", *data, "--method", "cd", *TINY], check=False)
    assert refused(proc, "pass --teacher CKPT") and proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    proc = run(["-m", "consistency.cli.sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", "x.npz"], check=False)
    assert refused(proc, "does not exist")


def test_quickstart_example_runs(fake_mnist, tmp_path):
    run(["examples/quickstart.py", "--data-root", str(fake_mnist), "--minutes", "0.02", "--out", str(tmp_path),
         "--no-compile"])
    assert (tmp_path / "quickstart_1step.png").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_the_notebook_runs(fake_mnist, tmp_path):
    """Every code cell of examples/quickstart.ipynb, in order, on the fake MNIST and a few seconds of training."""
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert any("ConsistencyTrainer(" in c for c in cells) and any(".train(" in c for c in cells)
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join(cells))
    run([str(script)], cwd=tmp_path, env={"MNIST_ROOT": str(fake_mnist), "QUICKSTART_MINUTES": "0.03",
                                          "PYTHONPATH": str(ROOT)})
    assert (tmp_path / "runs" / "notebook" / "checkpoint.pt").is_file()


@pytest.fixture
def trained(fake_mnist, tmp_path):
    """A tiny unconditional and a tiny class-conditional checkpoint, and an EDM one."""
    from consistency import ConsistencyModel, ConsistencyTrainer, EDMLoss, UNet, mnist

    paths = {}
    for name, classes, method in (("plain", None, None), ("conditional", 10, None), ("edm", None, EDMLoss())):
        net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=classes)
        model = method.wrap(net) if method else ConsistencyModel(net)
        ConsistencyTrainer(model, mnist(fake_mnist, batch_size=8, download=False), method=method, total_steps=2,
                           device="cpu", progress=False, out_dir=tmp_path / name, sample_every=0).train()
        paths[name] = str(tmp_path / name / "checkpoint.pt")
    return paths


def test_edit_cli_tasks(trained, fake_mnist, tmp_path, capsys):
    from PIL import Image

    from consistency.cli.edit import main as edit_main
    from consistency.images import save_grid

    ckpt = trained["plain"]
    digit = tmp_path / "digit.png"
    save_grid(torch.zeros(1, 1, 28, 28), digit)  # a blank 28x28 image
    small = tmp_path / "small.png"
    save_grid(torch.zeros(1, 1, 7, 7), small)
    out = tmp_path / "o.png"
    run(["-m", "consistency.cli.edit", "inpaint", "--checkpoint", ckpt, "--input", str(digit), "--box", "0,14,28,28",
         "--out", str(out), "--device", "cpu"])
    assert out.is_file()
    assert call(edit_main, ["super-resolve", "--checkpoint", ckpt, "--input", str(small), "--factor", "4", "--out",
                            str(out)], capsys).returncode == 0
    assert call(edit_main, ["interpolate", "--checkpoint", ckpt, "--num", "3", "--out", str(out)], capsys).returncode == 0
    assert Image.open(out).size == (3 * 28 + 4 * 2, 28 + 2 * 2)  # three images in a row with the grid's padding
    figure = tmp_path / "editing.png"
    run(["examples/editing.py", "--checkpoint", ckpt, "--data-root", str(fake_mnist), "--out", str(figure)])
    assert Image.open(figure).size == (8 * 28 + 9 * 2, 5 * 28 + 6 * 2)  # 5 task rows of 8 images
    before = digit.read_bytes()
    for args, message in [
        (["colorize", "--input", str(digit), "--out", str(out)], "RGB"),
        (["inpaint", "--input", str(digit), "--box", "0,0,40,40", "--out", str(out)], "does not fit"),
        (["super-resolve", "--input", str(digit), "--factor", "4", "--out", str(out)], "7x7 input"),
        (["inpaint", "--input", str(digit), "--box", "0,14,28,28", "--out", str(digit)], "destroy the input"),
        (["inpaint", "--input", str(digit), "--box", "0,14,28,28", "--out", str(out), "--class-label", "3"],
         "not class-conditional"),
        (["sharpen", "--out", str(out)], "unknown task"),
    ]:
        assert refused(call(edit_main, [args[0], "--checkpoint", ckpt, *args[1:]], capsys), message), args
    assert digit.read_bytes() == before
    proc = call(edit_main, ["denoise", "--checkpoint", trained["edm"], "--input", str(digit), "--out", str(out)], capsys)
    assert refused(proc, "not a consistency model")


def test_editing_with_a_class_conditional_model(trained, fake_mnist, tmp_path, capsys):
    from PIL import Image

    from consistency.cli.edit import main as edit_main
    from consistency.images import save_grid

    digit, out = tmp_path / "digit.png", tmp_path / "o.png"
    save_grid(torch.zeros(1, 1, 28, 28), digit)
    edit = ["inpaint", "--checkpoint", trained["conditional"], "--input", str(digit), "--box", "0,14,28,28", "--out",
            str(out), "--device", "cpu"]
    assert refused(call(edit_main, edit, capsys), "--class-label")
    assert refused(call(edit_main, [*edit, "--class-label", "10"], capsys), "--class-label must be in 0..9")
    assert call(edit_main, [*edit, "--class-label", "3"], capsys).returncode == 0
    assert out.is_file()
    figure = tmp_path / "editing.png"
    run(["examples/editing.py", "--checkpoint", trained["conditional"], "--data-root", str(fake_mnist), "--out",
         str(figure)])
    assert Image.open(figure).size == (8 * 28 + 9 * 2, 5 * 28 + 6 * 2)


def test_main_imagenet9_on_an_image_folder(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 10), (100 * i, 50, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "out"
    run(["main_imagenet9.py", "--dataset", "folder", "--data-root", str(tmp_path / "imgs"), "--image-size", "8",
         "--out", str(out), "--steps", "2", "--num-workers", "0", *TINY])
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["num_classes"] == 2 and config["model"]["in_channels"] == 3
    assert config["data"]["classes"] == ["a", "b"]
    assert Image.open(out / "samples" / "final_1step.png").size[1] == 2 * 8 + 3 * 2  # one row per class
    proc = run(["main_imagenet9.py", "--data-root", str(tmp_path / "imgs"), "--out", str(tmp_path / "x"), *TINY],
               check=False)
    assert refused(proc, "ImageNet-9 class folders")


def test_flips_are_on_by_default_off_with_no_flip_and_kept_on_resume(tmp_path, capsys, monkeypatch):
    """A mirrored digit is another digit (or none): --no-flip trains on the images as they are, and a resumed run
    keeps its own setting unless a flag says otherwise."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    import main_imagenet9

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        image = Image.new("RGB", (8, 8), (0, 0, 0))
        image.paste((255, 255, 255), (0, 0, 4, 8))  # left half white: a flip moves it right
        for i in range(4):
            image.save(tmp_path / "imgs" / cls / f"{i}.png")
    common = ["--dataset", "folder", "--data-root", str(tmp_path / "imgs"), "--image-size", "8", "--num-workers", "0"]
    out = tmp_path / "out"
    succeeds(imagenet9_py, [*common, "--out", str(out), "--steps", "2", "--no-flip", *TINY], capsys)
    assert json.loads((out / "config.json").read_text())["run"]["flip"] is False

    def flipped_reads(argv):
        seen = {}
        monkeypatch.setattr(main_imagenet9, "train", lambda config, dataset, **kw: seen.update(data=dataset()))
        succeeds(imagenet9_py, argv, capsys)
        from consistency.data import make_loader, resumable_batches

        batches = resumable_batches(make_loader(seen["data"], batch_size=1), 0)  # flips are drawn as batches are
        reads = [next(batches)[0][0] for _ in range(30)]
        assert all(x[:, :, :4].min() > 0.9 or x[:, :, 4:].min() > 0.9 for x in reads)  # the image, maybe mirrored
        return sum(bool(x[:, :, 0].min() < 0) for x in reads)

    resume = [*common, "--out", str(out), "--resume", "auto", "--steps", "4", *TINY]
    assert flipped_reads(resume) == 0
    assert flipped_reads([*resume, "--flip"]) > 0
    assert flipped_reads([*common, "--out", str(tmp_path / "fresh"), *TINY]) > 0  # the default: flips


def test_teacher_then_distillation(fake_mnist, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    succeeds(main_py, ["--method", "edm", "--data-root", str(fake_mnist), "--out", str(teacher), "--steps", "2", *TINY], capsys)
    assert (teacher / "samples" / "final_18step.png").is_file()  # EDM Heun sampler, 35 evaluations
    student = tmp_path / "student"
    succeeds(main_py, ["--method", "cd", "--teacher", str(teacher / "checkpoint.pt"), "--data-root", str(fake_mnist),
         "--out", str(student), "--steps", "2", *TINY], capsys)
    config = json.loads((student / "config.json").read_text())
    assert config["method"]["name"] == "cd" and config["method"]["mu"] == 0.95
    # EDM's time embedding (no 1000x scale), kept by the student that starts from the teacher's weights
    assert json.loads((teacher / "config.json").read_text())["model"]["net"]["time_scale"] == 1.0
    assert config["model"]["net"]["time_scale"] == 1.0
    old = read_checkpoint(teacher / "checkpoint.pt")  # a teacher from before 0.2 (1000x) resumes as the model it is
    old.model["net"]["time_scale"] = 1000.0
    (tmp_path / "old").mkdir()
    save_checkpoint(old, tmp_path / "old" / "checkpoint.pt")
    succeeds(main_py, ["--method", "edm", "--data-root", str(fake_mnist), "--out", str(tmp_path / "old"), "--resume",
                       "--steps", "3", *TINY], capsys)
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model"]["net"]["time_scale"] == 1000.0
    assert config["method"]["num_scales"] == 10 and "method_options.num_scales" in config["preset"]["filled"]
    succeeds(main_py, ["--method", "cd", "--teacher", str(teacher / "checkpoint.pt"), "--data-root", str(fake_mnist),
         "--out", str(tmp_path / "cm18"), "--steps", "1", "--num-scales", "18", *TINY], capsys)
    assert json.loads((tmp_path / "cm18" / "config.json").read_text())["method"]["num_scales"] == 18
    tuned = tmp_path / "ect"  # ECT tuned from the same teacher: its architecture, its weights to start from
    succeeds(main_py, ["--method", "ect", "--teacher", str(teacher / "checkpoint.pt"), "--data-root", str(fake_mnist),
                       "--out", str(tuned), "--steps", "2", *TINY], capsys)
    config = json.loads((tuned / "config.json").read_text())
    assert config["method"]["name"] == "ect" and config["method"]["tuned"] and config["model"]["sigma_min"] == 0.0
    # a consistency checkpoint is not a teacher; a different architecture is refused
    proc = call(main_py, ["--method", "cd", "--teacher", str(student / "checkpoint.pt"), "--data-root",
                str(fake_mnist), "--out", str(tmp_path / "x"), *TINY], capsys)
    assert refused(proc, "not a diffusion teacher")
    args = [a if a != "8" else "16" for a in TINY]  # --width 16 (and batch 16) against a width-8 teacher
    proc = call(main_py, ["--method", "cd", "--teacher", str(teacher / "checkpoint.pt"), "--data-root",
                str(fake_mnist), "--out", str(tmp_path / "y"), *args], capsys)
    assert refused(proc, "differs from the teacher")


def test_the_readme_notebook_snippet_runs(fake_mnist):
    text = (ROOT / "README.md").read_text()
    snippet = text.split("## From a notebook")[1].split("```python")[1].split("```")[0]
    assert 'cm.mnist("data"' in snippet and "total_steps=5000" in snippet  # what the substitutions below replace
    snippet = snippet.replace('cm.mnist("data"', f"cm.mnist({str(fake_mnist)!r}").replace("total_steps=5000",
                                                                                          "total_steps=3")
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["trainer"].step_count == 3 and scope["images"].shape == (64, 1, 28, 28)
