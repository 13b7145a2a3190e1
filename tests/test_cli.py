"""The scripts as a user runs them: main.py, --resume, --help, bad input, python -m consistency.sample."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--width", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--batch-size", "8", "--no-progress",
        "--sample-every", "0", "--device", "cpu"]


def run(args, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_main_trains_resumes_and_samples(fake_mnist, tmp_path):
    out = tmp_path / "run"
    run(["main.py", "--data-root", str(fake_mnist), "--out", str(out), "--steps", "6", "--checkpoint-every", "3", *TINY])
    for name in ("config.json", "checkpoint.pt", "loss_curve.png", "samples/final_1step.png", "samples/final_2step.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["recipe"] == "ict" and config["total_steps"] == 6
    assert json.loads((out / "run.json").read_text())["step"] == 6

    # --resume continues to a longer run: the step counter carries on.
    proc = run(["main.py", "--data-root", str(fake_mnist), "--out", str(out), "--resume", "--steps", "6", *TINY])
    assert "Resumed from" in proc.stdout and json.loads((out / "run.json").read_text())["step"] == 6

    npz = tmp_path / "s.npz"
    run(["-m", "consistency.sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "5", "--steps", "2",
         "--out", str(npz), "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
    images = np.load(npz)["images"]
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.uint8
    run(["-m", "consistency.sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "5", "--steps", "2",
         "--out", str(tmp_path / "t.npz"), "--device", "cpu"])
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], images)  # seeded


def test_main_ct_recipe_and_class_conditioning(fake_mnist, tmp_path):
    run(["main.py", "--data-root", str(fake_mnist), "--out", str(tmp_path), "--steps", "2", "--recipe", "ct", *TINY])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["loss"]["name"] == "ConsistencyTraining" and config["model"]["net"]["num_classes"] == 10  # default
    plain = tmp_path / "unconditional"
    run(["main.py", "--data-root", str(fake_mnist), "--out", str(plain), "--steps", "2", "--no-class-conditional", *TINY])
    assert json.loads((plain / "config.json").read_text())["model"]["net"]["num_classes"] is None
    # resuming the unconditional run without the flag would change the model: a clear error, not a silent restart
    proc = run(["main.py", "--data-root", str(fake_mnist), "--out", str(plain), "--steps", "4", "--resume", *TINY],
               check=False)
    assert proc.returncode != 0 and "different model" in proc.stderr and "Traceback" not in proc.stderr


def test_help_and_bad_input(tmp_path):
    assert "--minutes" in run(["main.py", "--help"]).stdout
    proc = run(["main.py", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *TINY], check=False)
    assert proc.returncode != 0 and "MNIST (train) not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["main.py", "--channel-mult", "1,x"], check=False)
    assert proc.returncode == 2 and "comma-separated integers" in proc.stderr
    proc = run(["-m", "consistency.sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", "x.npz"], check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_quickstart_example_runs(fake_mnist, tmp_path):
    run(["examples/quickstart.py", "--data-root", str(fake_mnist), "--minutes", "0.02", "--out", str(tmp_path)])
    assert (tmp_path / "quickstart_1step.png").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_notebook_cells_are_valid_python():
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    code = [("".join(c["source"])) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 4
    for source in code:
        compile(source, "quickstart.ipynb", "exec")
    assert any("ConsistencyTrainer(" in c for c in code) and any(".train(" in c for c in code)


def test_edit_cli_tasks(fake_mnist, tmp_path):
    import torch

    from consistency import ConsistencyModel, ConsistencyTrainer, UNet, mnist
    from consistency.images import save_grid

    trainer = ConsistencyTrainer(ConsistencyModel(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)),
                                 mnist(fake_mnist, batch_size=8, download=False), total_steps=2, device="cpu",
                                 progress=False, out_dir=tmp_path / "run", sample_every=0)
    trainer.train()
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    digit = tmp_path / "digit.png"
    save_grid(torch.zeros(1, 1, 28, 28), digit)  # a blank 28x28 image
    small = tmp_path / "small.png"
    save_grid(torch.zeros(1, 1, 7, 7), small)
    out = tmp_path / "o.png"
    base = ["-m", "consistency.edit"]
    run([*base, "inpaint", "--checkpoint", ckpt, "--input", str(digit), "--box", "0,14,28,28", "--out", str(out), "--device", "cpu"])
    assert out.is_file()
    run([*base, "super-resolve", "--checkpoint", ckpt, "--input", str(small), "--factor", "4", "--out", str(out), "--device", "cpu"])
    run([*base, "interpolate", "--checkpoint", ckpt, "--num", "3", "--out", str(out), "--device", "cpu"])
    from PIL import Image

    assert Image.open(out).size == (3 * 28 + 4 * 2, 28 + 2 * 2)  # three images in a row with the grid's padding
    figure = tmp_path / "editing.png"
    run(["examples/editing.py", "--checkpoint", ckpt, "--data-root", str(fake_mnist), "--out", str(figure)])
    assert Image.open(figure).size == (8 * 28 + 9 * 2, 5 * 28 + 6 * 2)  # 5 task rows of 8 images
    proc = run([*base, "colorize", "--checkpoint", ckpt, "--input", str(digit), "--out", str(out), "--device", "cpu"], check=False)
    assert proc.returncode != 0 and "RGB" in proc.stderr
    proc = run([*base, "inpaint", "--checkpoint", ckpt, "--input", str(digit), "--box", "0,0,40,40", "--out", str(out)], check=False)
    assert proc.returncode != 0 and "does not fit" in proc.stderr
    proc = run([*base, "sharpen", "--checkpoint", ckpt, "--out", str(out)], check=False)
    assert proc.returncode == 2 and "unknown task" in proc.stderr
    proc = run([*base, "super-resolve", "--checkpoint", ckpt, "--input", str(digit), "--factor", "4", "--out", str(out)], check=False)
    assert proc.returncode != 0 and "7x7 input" in proc.stderr


def test_editing_with_a_class_conditional_model(fake_mnist, tmp_path):
    import torch
    from PIL import Image

    from consistency import ConsistencyModel, ConsistencyTrainer, UNet, mnist
    from consistency.images import save_grid

    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=10)
    trainer = ConsistencyTrainer(ConsistencyModel(net), mnist(fake_mnist, batch_size=8, download=False), total_steps=2,
                                 device="cpu", progress=False, out_dir=tmp_path / "run", sample_every=0)
    trainer.train()
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    digit, out = tmp_path / "digit.png", tmp_path / "o.png"
    save_grid(torch.zeros(1, 1, 28, 28), digit)
    edit = ["-m", "consistency.edit", "inpaint", "--checkpoint", ckpt, "--input", str(digit), "--box", "0,14,28,28",
            "--out", str(out), "--device", "cpu"]
    proc = run(edit, check=False)
    assert proc.returncode != 0 and "--class-label" in proc.stderr
    run([*edit, "--class-label", "3"])
    assert out.is_file()
    figure = tmp_path / "editing.png"
    run(["examples/editing.py", "--checkpoint", ckpt, "--data-root", str(fake_mnist), "--out", str(figure)])
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
    assert config["model"]["net"]["num_classes"] == 2 and config["model"]["net"]["in_channels"] == 3
    from PIL import Image as I

    assert I.open(out / "samples" / "final_1step.png").size[1] == 2 * 8 + 3 * 2  # one row per class
    proc = run(["main_imagenet9.py", "--data-root", str(tmp_path / "imgs"), "--out", str(out), *TINY], check=False)
    assert proc.returncode != 0 and "ImageNet-9 class folders" in proc.stderr


def test_teacher_then_distillation(fake_mnist, tmp_path):
    teacher = tmp_path / "teacher"
    run(["main.py", "--mode", "teacher", "--data-root", str(fake_mnist), "--out", str(teacher), "--steps", "2", *TINY])
    assert (teacher / "samples" / "final_18step.png").is_file()  # EDM Heun sampler, 35 evaluations
    student = tmp_path / "student"
    run(["main.py", "--mode", "distill", "--teacher", str(teacher / "checkpoint.pt"), "--data-root", str(fake_mnist),
         "--out", str(student), "--steps", "2", *TINY])
    config = json.loads((student / "config.json").read_text())
    assert config["loss"]["name"] == "ConsistencyDistillation" and config["loss"]["mu"] == 0.95
    assert config["loss"]["n"] == 10 and "num_scales" in config["args"]["preset_filled"]  # the CPU preset's N
    assert "num_scales" not in json.loads((teacher / "config.json").read_text())["args"]["preset_filled"]
    run(["main.py", "--mode", "distill", "--teacher", str(teacher / "checkpoint.pt"), "--data-root", str(fake_mnist),
         "--out", str(tmp_path / "cm18"), "--steps", "1", "--num-scales", "18", *TINY])
    assert json.loads((tmp_path / "cm18" / "config.json").read_text())["loss"]["n"] == 18
    # a consistency checkpoint is not a teacher; a different architecture is refused
    proc = run(["main.py", "--mode", "distill", "--teacher", str(student / "checkpoint.pt"), "--data-root",
                str(fake_mnist), "--out", str(tmp_path / "x"), *TINY], check=False)
    assert proc.returncode != 0 and "not an EDM teacher" in proc.stderr
    args = [a if a != "8" else "16" for a in TINY]  # --width 16 (and batch 16) against a width-8 teacher
    proc = run(["main.py", "--mode", "distill", "--teacher", str(teacher / "checkpoint.pt"), "--data-root",
                str(fake_mnist), "--out", str(tmp_path / "y"), *args], check=False)
    assert proc.returncode != 0 and "differs from the teacher" in proc.stderr
    proc = run(["main.py", "--mode", "distill", "--data-root", str(fake_mnist), "--out", str(tmp_path / "z"), *TINY],
               check=False)
    assert proc.returncode != 0 and "needs --teacher" in proc.stderr
