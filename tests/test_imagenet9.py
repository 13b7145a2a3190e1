"""ImageNet-9 and image folders on small generated folder trees with the real WordNet ids."""

import pytest
import torch
from PIL import Image

from consistency.data import IMAGENET9, IMAGENET9_CLASSES, image_folder_dataset, imagenet9_dataset

UNRELATED = ["n01440764", "n04592741"]  # tench, wing: ImageNet classes outside ImageNet-9


def _jpeg(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)


@pytest.fixture
def fake_imagenet(tmp_path):
    root = tmp_path / "train"
    for label, name in enumerate(IMAGENET9_CLASSES):
        for wnid in IMAGENET9[name].values():
            for i in range(2):
                _jpeg(root / wnid / f"{wnid}_{i}.JPEG", (20 * label, 255 - 20 * label, 128))
    for wnid in UNRELATED:
        _jpeg(root / wnid / f"{wnid}_0.JPEG", (0, 0, 0))
    return root


def test_the_table_has_42_distinct_wnids_and_the_issue_indices():
    wnids = [w for name in IMAGENET9_CLASSES for w in IMAGENET9[name].values()]
    assert len(wnids) == 42 == len(set(wnids))
    indices = sorted(i for name in IMAGENET9_CLASSES for i in IMAGENET9[name])
    assert indices[:8] == [30, 31, 32, 33, 34, 35, 36, 37] and indices[-1] == 397
    # sorted-wnid order: a larger ImageNet index means a larger wnid
    by_index = [w for _, w in sorted((i, w) for name in IMAGENET9_CLASSES for i, w in IMAGENET9[name].items())]
    assert by_index == sorted(by_index)


def test_labels_transforms_and_range(fake_imagenet):
    ds = imagenet9_dataset(fake_imagenet, image_size=8)
    assert len(ds) == 84  # 42 classes x 2 images; the unrelated folders are ignored
    assert all(UNRELATED[0] not in str(path) for path, _ in ds.samples)
    labels = torch.tensor([label for _, label in ds.samples])
    assert torch.bincount(labels).tolist() == [10, 10, 6, 10, 10, 10, 10, 8, 10]
    cat_index = next(i for i, (p, _) in enumerate(ds.samples) if "n02123045" in str(p))
    x, y = ds[cat_index]
    assert y == IMAGENET9_CLASSES.index("cat") == 1
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1
    # the colour written for label 1, (20, 235, 128), comes back scaled to [-1, 1] (JPEG rounding aside)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([20, 235, 128]) / 127.5 - 1, atol=0.05)


def test_missing_class_folder_is_named(fake_imagenet):
    import shutil

    shutil.rmtree(fake_imagenet / "n02219486")
    with pytest.raises(FileNotFoundError, match="n02219486"):
        imagenet9_dataset(fake_imagenet, 8)
    with pytest.raises(FileNotFoundError, match="one folder per WordNet id"):
        imagenet9_dataset(fake_imagenet / "nope", 8)


def test_image_folder_with_and_without_classes(tmp_path):
    for cls, color in (("apples", (255, 0, 0)), ("pears", (0, 255, 0))):
        for i in range(3):
            _jpeg(tmp_path / "labelled" / cls / f"{i}.jpg", color, size=(20, 16))
    ds = image_folder_dataset(tmp_path / "labelled", image_size=8)
    assert ds.classes == ["apples", "pears"] and len(ds) == 6
    x, y = ds[5]
    assert y == 1 and x.shape == (3, 8, 8) and x[1].mean() > 0.9  # green pear
    for i in range(2):
        _jpeg(tmp_path / "flat" / f"{i}.png", (0, 0, 255))
    flat = image_folder_dataset(tmp_path / "flat", image_size=4)
    assert len(flat) == 2 and flat.classes == [] and flat[0][0].shape == (3, 4, 4)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder_dataset(tmp_path / "empty", 8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = image_folder_dataset(tmp_path / "bad", 8)
    with pytest.warns(UserWarning, match="broken.jpg"), pytest.raises(ValueError, match="no image of the data set"):
        ds[0]


def test_a_broken_image_is_skipped_with_a_warning_naming_it(tmp_path):
    for i in range(3):
        _jpeg(tmp_path / "a" / f"{i}.jpg", (200, 0, 0))
    (tmp_path / "a" / "1.jpg").write_bytes(b"\xff\xd8 truncated")  # the second file is broken
    ds = image_folder_dataset(tmp_path, 8, flip=False)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*1\.jpg"):
        x, y = ds[1]
    assert torch.equal(x, ds[2][0]) and y == 0  # the next image took its place


def test_an_empty_class_folder_is_left_out(tmp_path):
    _jpeg(tmp_path / "cats" / "0.jpg", (0, 0, 0))
    _jpeg(tmp_path / "dogs" / "0.jpg", (0, 0, 0))
    (tmp_path / "empty_class").mkdir()
    with pytest.warns(UserWarning, match="empty_class.*left out"):
        ds = image_folder_dataset(tmp_path, 8)
    assert ds.classes == ["cats", "dogs"] and [label for _, label in ds.samples] == [0, 1]


@pytest.mark.parametrize("kind", ["16-bit", "palette", "grayscale", "rgba"])
def test_image_modes_are_converted_faithfully(tmp_path, kind):
    import numpy as np

    from consistency.data import open_rgb

    path = tmp_path / "img.png"
    if kind == "16-bit":  # mid-grey in 16 bits: 32896 / 65535 -> 128, not clipped to white
        Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(path)
        expected = (128, 128, 128)
    elif kind == "palette":
        Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        expected = (10, 200, 30)
    elif kind == "grayscale":
        Image.new("L", (4, 4), 77).save(path)
        expected = (77, 77, 77)
    else:  # half-transparent red over white
        Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(path)
        expected = (255, 127, 127)
    img = open_rgb(path)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == pytest.approx(expected, abs=1)
