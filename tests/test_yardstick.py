"""The per-data-set yardstick, Inception FID's plumbing (a stand-in extractor), colored MNIST and TensorBoard logs."""

import json
import sys

import pytest
import torch

from consistency.data import colored_mnist, image_folder_dataset, write_image_tree
from consistency.yardstick import Yardstick, folder_splits, inception_extractor, inception_fid


def bars(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 8x8 RGB images: a horizontal or a vertical bar at a random place, on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 8, 8, generator=g) * 60).to(torch.uint8)
    labels = torch.arange(n) % 2
    for i in range(n):
        k = int(torch.randint(1, 7, (1,), generator=g))
        if labels[i]:
            images[i, :, :, k] = 255
        else:
            images[i, :, k, :] = 255
    return images, labels


@pytest.fixture
def bars_folder(tmp_path):
    images, labels = bars(160)
    return write_image_tree(images, labels, ["horizontal", "vertical"], tmp_path / "bars")


def test_the_classifier_is_cached_and_retrained_when_the_data_changes(bars_folder, tmp_path):
    log = []
    cache = tmp_path / "cache"
    first = Yardstick.load_or_train(folder_splits(bars_folder, 8), cache, epochs=3, log=log.append)
    assert len(log) == 1 and first.accuracy > 0.9 and len(list(cache.glob("yardstick-*.pt"))) == 1
    again = Yardstick.load_or_train(folder_splits(bars_folder, 8), cache, log=log.append)
    assert len(log) == 1  # reused: nothing trained
    assert all(torch.equal(a, b) for a, b in zip(first.classifier.parameters(), again.classifier.parameters()))
    Yardstick.load_or_train(folder_splits(bars_folder, 8, holdout=0.3), cache, epochs=1, log=log.append)
    assert len(log) == 2  # another split: its held-out images may be the first classifier's training images
    extra, _ = bars(1, seed=9)
    write_image_tree(extra, torch.tensor([0]), ["horizontal", "vertical"], tmp_path / "more")
    (tmp_path / "more" / "horizontal" / "000000.png").rename(bars_folder / "horizontal" / "new.png")
    Yardstick.load_or_train(folder_splits(bars_folder, 8), cache, epochs=1, log=log.append)
    assert len(log) == 3 and len(list(cache.glob("yardstick-*.pt"))) == 3  # the data changed: trained again


def test_real_images_score_far_below_noise_and_labels_are_read(bars_folder, tmp_path):
    yardstick = Yardstick.load_or_train(folder_splits(bars_folder, 8), tmp_path / "cache", epochs=3, log=lambda m: None)
    floor, noise = yardstick.references(100)
    assert floor["fid"] < noise["fid"] / 10 and floor["classes_seen"] == 2
    images, labels = bars(40, seed=5)
    right, wrong = yardstick.score(images, labels), yardstick.score(images, 1 - labels)
    assert right["label_agreement"] > 0.9 and wrong["label_agreement"] < 0.1
    with pytest.raises(ValueError, match="yardstick's data"):
        yardstick.score(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_inception_fid_plumbing_with_a_stand_in_extractor(tmp_path):
    calls = []
    projection = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def stand_in(images):  # (N, 3, H, W) uint8 -> (N, 16), as torch-fidelity's extractor maps to (N, 2048)
        calls.append(len(images))
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        return images.flatten(1).double() @ projection

    real, _ = bars(200)
    same, _ = bars(200, seed=1)
    noise = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    cache = tmp_path / "inception.pt"
    close = inception_fid(same, real, stand_in, cache=cache, batch_size=64)
    assert cache.is_file() and sum(calls) == 400  # the real statistics were computed once and cached
    far = inception_fid(noise, real, stand_in, cache=cache, batch_size=64)
    assert sum(calls) == 600 and close < far / 5  # the cached statistics were reused
    gray = inception_fid(real[:, :1], real, stand_in, cache=cache)  # grayscale is repeated to three channels
    assert gray > 0


def test_inception_without_torch_fidelity_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ValueError, match=r'pip install "consistency-models\[fid\]"'):
        inception_extractor()


def test_colored_mnist_is_deterministic_and_keeps_the_digit_in_grayscale(tmp_path):
    digits = torch.zeros(4, 28, 28, dtype=torch.uint8)
    digits[:, 10:18, 12:16] = 255
    a, b = colored_mnist(digits, seed=0), colored_mnist(digits, seed=0)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, colored_mnist(digits, seed=1))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (a.float() / 255 * luma).sum(1)  # (4, 32, 32)
    assert ((grey[:, 16, 14] - grey[:, 1, 1]).abs() >= 0.29).all()  # digit vs background luminance
    assert len({tuple(a[i, :, 1, 1].tolist()) for i in range(4)}) == 4  # every image its own colours
    write_image_tree(a, torch.tensor([0, 1, 0, 1]), ["0", "1"], tmp_path / "tree")
    assert image_folder_dataset(tmp_path / "tree", 32).classes == ["0", "1"]


def test_the_evaluate_and_colored_mnist_command_lines(fake_mnist, tmp_path, capsys):
    from consistency.cli.colored_mnist import main as colored_main
    from consistency.cli.evaluate import main as evaluate_main
    from tests.test_cli import TINY, imagenet9_py, succeeds

    succeeds(colored_main, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "cm")], capsys)
    assert len(list((tmp_path / "cm" / "train").rglob("*.png"))) == 64
    run = tmp_path / "run"
    succeeds(imagenet9_py, ["--dataset", "folder", "--data-root", str(tmp_path / "cm" / "train"), "--image-size",
                                 "32", "--out", str(run), "--steps", "2", "--num-workers", "0", *TINY], capsys)
    out = tmp_path / "scores.jsonl"
    succeeds(evaluate_main, ["--checkpoint", str(run / "checkpoint.pt"), "--n", "20", "--steps", "1", "--json",
                             str(out), "--references", "--holdout", "0.25"], capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["what"].split(":")[0] for r in rows[:2]] == ["floor", "noise"]
    assert rows[2]["nfe"] == 1 and 0 <= rows[2]["label_agreement"] <= 1 and rows[2]["n"] == 20
    assert (tmp_path / "cm" / "train" / ".consistency-yardstick").is_dir()  # cached beside the data


def test_tensorboard_logs_or_says_how_to_install(tmp_path, monkeypatch, synthetic_loader):
    from consistency import ConsistencyTrainer
    from tests.conftest import tiny_model

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"consistency-models\[tb\]"):
            ConsistencyTrainer(tiny_model(), synthetic_loader, device="cpu", out_dir=tmp_path, tensorboard=True)
        return
    trainer = ConsistencyTrainer(tiny_model(), synthetic_loader, device="cpu", out_dir=tmp_path, tensorboard=True,
                                 total_steps=3, progress=False, sample_every=0, num_sample_images=4)
    trainer.train()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match=r"consistency-models\[tb\]"):
        ConsistencyTrainer(tiny_model(), synthetic_loader, device="cpu", out_dir=tmp_path, tensorboard=True)
