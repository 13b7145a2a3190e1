import numpy as np
import pytest
import torch

from consistency import EpochSampler, load_mnist_arrays, mnist
from tests.conftest import REAL_MNIST, write_idx


def test_mnist_from_an_idx_folder(fake_mnist):
    images, labels = load_mnist_arrays(fake_mnist, "train", download=False)
    assert images.shape == (64, 28, 28) and images.dtype == torch.uint8 and labels.shape == (64,)
    # the fixture draws a bar whose row encodes the label
    for img, lab in zip(images[:5], labels[:5]):
        assert img[4 + 2 * lab, 10] == 255 and img[4 + 2 * lab - 1, 10] == 0 if lab else img[4, 10] == 255
    loader = mnist(fake_mnist, batch_size=16, download=False)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and x.min() == -1 and x.max() == 1 and y.dtype == torch.int64


def test_uncompressed_idx_and_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = torch.arange(2 * 28 * 28).remainder(256).view(2, 28, 28).numpy()
    write_idx(raw / "t10k-images-idx3-ubyte", imgs, gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.tensor([7, 1]).numpy(), gz=False)
    images, labels = load_mnist_arrays(tmp_path, "test", download=False)
    assert torch.equal(images, torch.from_numpy(imgs).to(torch.uint8)) and labels.tolist() == [7, 1]


def test_missing_mnist_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist_arrays(tmp_path / "nowhere", "train", download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "nowhere") in message and "--data-root" in message


def test_epoch_sampler_is_seeded_sharded_and_resumable():
    s = EpochSampler(10, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == list(range(10)) and e0 != e1
    s.set_epoch(0, start=4)
    assert list(s) == e0[4:] and len(s) == 6
    r0, r1 = EpochSampler(10, seed=1, rank=0, world_size=2), EpochSampler(10, seed=1, rank=1, world_size=2)
    assert sorted(list(r0) + list(r1)) == list(range(10)) and len(r0) == 5


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="real MNIST folder not present")
def test_real_mnist():
    images, labels = load_mnist_arrays(REAL_MNIST, "test", download=False)
    assert images.shape == (10_000, 28, 28) and torch.bincount(labels).tolist()[:2] == [980, 1135]


@pytest.mark.parametrize("fault,message", [
    ("truncated", "truncated or damaged"),
    ("magic", "not an idx file of 3-d unsigned bytes"),
    ("count", "do not belong together"),
    ("label", "outside MNIST's 0..9"),
    ("gzip", "cannot be read"),
])
def test_damaged_mnist_files_are_refused_naming_the_file(fake_mnist, fault, message):
    import gzip

    images = fake_mnist / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    if fault == "truncated":
        images.write_bytes(gzip.compress(data[:-100]))
    elif fault == "magic":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + data[4:]))
    elif fault == "count":
        write_idx(fake_mnist / "train-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    elif fault == "label":
        write_idx(fake_mnist / "train-labels-idx1-ubyte", np.full(64, 12, dtype=np.uint8))
    else:
        images.write_bytes(images.read_bytes()[:50])
    culprit = "labels" if fault == "label" else "images"
    with pytest.raises(ValueError, match=message) as info:
        load_mnist_arrays(fake_mnist, "train", download=False)
    assert culprit in str(info.value) or fault == "count"
