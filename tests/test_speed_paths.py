"""The fast paths (issue 21), tested on the CPU: data kept on the training device, no host synchronisation between
log lines, fused EMA updates, which CPUs count as having fast bf16, and the MFU benchmark's counting."""

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from consistency import ConsistencyTrainer, EDMDenoiser, build_method
from consistency.data import (
    DeviceLoader,
    EpochSampler,
    ImageTensors,
    image_folder_dataset,
    in_memory,
    make_loader,
    mnist_dataset,
    resumable_batches,
    write_image_tree,
)
from consistency.ema import EMA
from tests.conftest import REAL_MNIST, randomize_, tiny_model, tiny_unet

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def u8_images(n=40, channels=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def test_the_device_loader_serves_the_batches_a_dataloader_would():
    images, labels = u8_images(), torch.arange(40) % 3
    device_loader = make_loader(ImageTensors(images, labels), batch_size=8, seed=4, rank=1, world_size=2)
    plain = make_loader(TensorDataset(images.float() / 127.5 - 1, labels), batch_size=8, seed=4, rank=1, world_size=2)
    assert isinstance(device_loader, DeviceLoader) and len(device_loader) == len(plain) == 2
    for a, b in zip(_take(device_loader, 5), _take(plain, 5)):  # across epochs: the same images, bit for bit
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a resumed run (step 3: mid-epoch) sees the batches an uninterrupted one sees from there
    full = _take(device_loader, 6)
    resumed = make_loader(ImageTensors(images, labels), batch_size=8, seed=4, rank=1, world_size=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], _take(resumed, 3, start=3)))


def _take(loader, n, start=0):
    batches = resumable_batches(loader, start)
    return [next(batches) for _ in range(n)]


def test_flips_are_drawn_per_epoch_and_survive_a_resume():
    images = torch.zeros(32, 1, 4, 4, dtype=torch.uint8)
    images[..., :2] = 255  # left half white: a flipped image has it on the right
    data = ImageTensors(images, flip=True)
    loader = make_loader(data, batch_size=8, seed=1)
    full = _take(loader, 8)  # two epochs
    flipped = torch.cat([b[0][:, 0, 0, 3] > 0 for b in full])
    assert 0.25 < flipped.float().mean() < 0.75  # about half, decided per image
    assert not torch.equal(flipped[:32], flipped[32:])  # another draw next epoch
    resumed = _take(make_loader(data, batch_size=8, seed=1), 3, start=5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], resumed))
    rng = torch.get_rng_state()
    _take(make_loader(data, batch_size=8, seed=1), 4)
    assert torch.equal(rng, torch.get_rng_state())  # the training noise stream is untouched
    unflipped = torch.cat([b[0] for b in _take(make_loader(ImageTensors(images), batch_size=8, seed=1), 4)])
    assert (unflipped[:, 0, 0, 0] > 0).all()


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="needs the real MNIST files")
def test_mnist_is_held_as_uint8_and_scaled_as_before():
    data = mnist_dataset(REAL_MNIST)
    assert data.images.dtype == torch.uint8 and data.images.shape == (60000, 1, 28, 28) and not data.flip
    x, y = data[7]
    assert torch.equal(x, data.images[7].float().div(127.5).sub(1)) and x.min() == -1 and x.max() == 1
    padded = mnist_dataset(REAL_MNIST, pad_to_32=True)
    assert padded.images.shape[-1] == 32 and padded[0][0][:, 0].eq(-1).all()


def test_an_image_folder_is_decoded_once_cached_and_decoded_again_when_it_changes(tmp_path):
    rgb = u8_images(12, channels=3, size=8)
    root = write_image_tree(rgb, torch.arange(12) % 2, ["a", "b"], tmp_path / "data")
    data = in_memory(image_folder_dataset(root, 8, flip=True))
    assert isinstance(data, ImageTensors) and data.flip and data.classes == ["a", "b"]
    order = sorted(range(12), key=lambda i: (i % 2, i))  # files sorted by class folder, then name
    assert torch.equal(data.images, rgb[order]) and data.labels.tolist() == [i % 2 for i in order]
    cached = list((root / ".consistency-cache").glob("images-8px-*.pt"))
    assert len(cached) == 1
    again = in_memory(image_folder_dataset(root, 8))
    assert torch.equal(again.images, data.images)  # read from the cache (no decoder ran: see below)
    cached[0].write_bytes(b"damaged")  # a damaged cache is decoded again
    assert torch.equal(in_memory(image_folder_dataset(root, 8)).images, data.images)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "a" / "000000.png")  # the data changes
    changed = in_memory(image_folder_dataset(root, 8))
    assert changed.images[0].sum() == 0 and len(list((root / ".consistency-cache").glob("images-8px-*.pt"))) == 2
    assert in_memory(image_folder_dataset(root, 8), max_bytes=100).__class__.__name__ == "ImageFiles"  # too big


def test_a_read_only_data_folder_caches_in_the_users_cache(tmp_path, monkeypatch):
    from consistency.utils import cache_folder

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        if __import__("os").access(data, __import__("os").W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert cache_folder(data).is_relative_to(tmp_path / "cache")
    finally:
        data.chmod(0o755)
    assert cache_folder(data) == data.resolve() / ".consistency-cache"


@pytest.mark.parametrize("name", ["ict", "ct", "ect", "cd", "scm", "scd", "meanflow", "edm"])
def test_no_host_synchronisation_between_log_lines(name, monkeypatch):
    """What would synchronise with a GPU (.item(), bool(tensor), .tolist(), float(tensor)) never runs between log
    lines: the CPU stand-in for the CUDA test under torch.cuda.set_sync_debug_mode("error")."""
    teacher = EDMDenoiser(randomize_(tiny_unet(time_scale=1.0))).eval() if name in ("ect", "cd", "scd") else None
    method = build_method(name, teacher)
    model = method.wrap(tiny_unet(dropout=0.1, **method.net_options))
    loader = make_loader(ImageTensors(u8_images(32)), batch_size=8)
    trainer = ConsistencyTrainer(model, loader, method=method, total_steps=40, device="cpu", progress=False, lr=1e-3)
    batches = resumable_batches(loader, 0)
    trainer._train_step(next(batches))
    trainer._flush()

    def synchronises(self, *args, **kwargs):
        raise AssertionError("a host synchronisation between log lines")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, synchronises)
    for _ in range(12):  # iCT's and CT's N change at step 10 of 40 (new levels, new probabilities), an epoch ends
        trainer._train_step(next(batches))
    monkeypatch.undo()
    assert len(trainer._flush()) == 12


def test_the_ema_is_the_exponential_average_and_skips_on_the_device():
    model = randomize_(tiny_model())
    ema = EMA(model, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), model.parameters()))
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, keep=torch.tensor(0.0))  # a skipped step
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), before))
    ema.update(model, 0.75, keep=torch.tensor(1.0))
    for e, p0, p in zip(ema.module.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.75 * p0 + 0.25 * p)
    assert not any(p.requires_grad for p in ema.parameters()) and ema.decay == 0.75


def test_fast_bf16_means_native_bf16_not_onednn_emulation(monkeypatch):
    from consistency import utils

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert not utils.cpu_has_fast_bf16()  # AVX-512 without BF16: oneDNN emulates bf16, slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert utils.cpu_has_fast_bf16()


def test_the_mfu_benchmark_counts_the_flops_of_a_step():
    sys.path.insert(0, str(ROOT))
    from benchmarks.mfu import build, count_flops

    trainer = build("mnist-cpu", "ict", torch.device("cpu"), {"batch_size": 4, "precision": "fp32", "compile": False})
    net = trainer.model.net
    x = torch.zeros(4, 1, 28, 28)
    forward = count_flops(lambda: net(x, torch.zeros(4), torch.zeros(4, dtype=torch.long)))
    step = count_flops(lambda: trainer._train_step(next(resumable_batches(trainer.loader, 0))))
    # online forward + its backward (about twice the forward) + the target forward: close to 4 forwards
    assert 3.5 * forward < step < 4.5 * forward
    assert isinstance(trainer.loader.sampler, EpochSampler)
