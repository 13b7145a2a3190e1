"""Data: images in [-1, 1] for the trainer (the only module that touches torchvision datasets).

A data set that fits in memory (MNIST, an image folder decoded once and cached) is an ImageTensors: one uint8 tensor.
make_loader() serves it with a DeviceLoader, which keeps that tensor on the training device and gathers, flips and
scales each batch there (no DataLoader, no collation of single items). Other data sets get a DataLoader. Both draw
each epoch's order from EpochSampler, a function of (seed, epoch), sharded by rank: a resumed run sees the same
batches.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .utils import cache_folder

MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class EpochSampler(Sampler[int]):
    """Shuffles with a permutation fixed by (seed, epoch), optionally sharded over `world_size` ranks.

    The trainer calls set_epoch(epoch, start) so that a resumed run sees exactly the batches an uninterrupted run would
    have seen, without loading the skipped ones.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of `epoch` and skip the first `start` indices of this rank's share."""
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        """This rank's indices of the current epoch, all of them (an int64 tensor on the CPU)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        per_rank = self.num_samples // self.world_size  # drop the tail so every rank gets the same count
        # Interleaved (as DistributedSampler): the k-th batches of all ranks together are the k-th global batch.
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def _indices(self) -> list[int]:
        return self.order().tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples // self.world_size - self.start


def split_batch(batch: Any, *, in_channels: int, image_shape: tuple[int, ...] | None, num_classes: int | None,
                device: torch.device, channels_last: bool = False, first: bool = False, label_dropout: float = 0.0,
                null_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) on `device`, from a batch given as a tensor, (images,) or (images, labels), checked
    against the model: (B, C, H, W) float images with its channels and image shape, integer labels (B,) where it is
    class-conditional. The first batch's values are checked too (images in [-1, 1], labels in 0..K-1): each problem
    is a ValueError or TypeError that names it and the fix. With label_dropout p, a share p of the labels (drawn
    independently, on the device) becomes `null_class`: classifier-free guidance's unconditional model."""
    if isinstance(batch, (list, tuple)):
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        x, y = batch, None
    if not torch.is_tensor(x) or x.ndim != 4:
        raise ValueError(f"expected image batches of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        fix = "x.float() / 127.5 - 1" if x.dtype == torch.uint8 else "x.float()"
        raise TypeError(f"the images are {x.dtype}; the trainer takes float32 images in [-1, 1]: convert them with {fix}")
    if x.shape[1] != in_channels:
        raise ValueError(f"the data has {x.shape[1]} channels but the model expects {in_channels}")
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"the data's images are {tuple(x.shape[1:])} but the model's are {tuple(image_shape)}")
    if num_classes and y is None:
        raise ValueError("the model is class-conditional (num_classes set) but the batches carry no labels")
    if num_classes:
        check_labels(y, len(x), num_classes, values=first)
    if first and x.numel() and (x.min() < -1.5 or x.max() > 1.5):
        raise ValueError(f"the images span [{x.min():.3g}, {x.max():.3g}]; the trainer takes images in [-1, 1]: "
                         "scale [0, 255] images with x / 127.5 - 1 and [0, 1] images with 2 x - 1")
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not num_classes:
        return x, None
    y = y.to(device, non_blocking=True)
    if label_dropout:
        if null_class is None:
            raise ValueError("label_dropout needs a network with a null class: build it with UNet(..., "
                             "null_class=True) (the command lines do when --label-dropout is given)")
        y = torch.where(torch.rand(y.shape, device=y.device) < label_dropout, null_class, y)
    return x, y


def check_labels(y: Any, batch: int, num_classes: int, *, values: bool = True) -> None:
    """Class labels as the model takes them: an integer tensor (B,) with values in 0..num_classes-1 (the values are
    read, a host sync, only when `values`)."""
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"class labels must be an integer tensor (torch.long), got "
                        f"{y.dtype if torch.is_tensor(y) else type(y).__name__}: convert them with y.long()")
    if tuple(y.shape) != (batch,):
        fix = ": flatten them with y.view(-1)" if y.numel() == batch else ""
        raise ValueError(f"class labels must have shape ({batch},), one per image, got {tuple(y.shape)}{fix}")
    if values and y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class labels must lie in 0..{num_classes - 1} (the model's num_classes is {num_classes}), "
                         f"got {int(y.min())}..{int(y.max())}")


def resumable_batches(loader: Any, step: int) -> Iterator[Any]:
    """Endless batches from `loader` as an uninterrupted run would see them from `step` on (epochs continue), without
    loading the skipped ones when the loader has an EpochSampler."""
    epoch, offset = divmod(step, len(loader))
    sampler = getattr(loader, "sampler", None)
    while True:
        skip = offset
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(epoch, offset * loader.batch_size)
            skip = 0
        elif hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        # A loader without its own generator seeds its workers from the global RNG: keep that out of the training
        # step's random stream.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
        yield from itertools.islice(iterator, skip, None)
        epoch, offset = epoch + 1, 0


class ImageTensors(Dataset):
    """A data set held as one uint8 tensor (N, C, H, W) and its labels (N,) (or None). As a Dataset its items are
    (image in [-1, 1], label); make_loader() serves it from the training device (DeviceLoader), flipped at random
    if `flip`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, *, flip: bool = False,
                 classes: list[str] = ()):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImageTensors takes uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.flip, self.classes = images, labels, flip, list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i].float() / 127.5 - 1
        return (x, self.labels[i]) if self.labels is not None else (x,)


class DeviceLoader:
    """Batches of an ImageTensors data set, gathered on `device`, where its uint8 tensor is moved once.

    Each epoch's order is EpochSampler's (a function of seed and epoch, sharded by rank); each image's flip is drawn
    per epoch from a generator seeded with (seed, epoch, rank), so a resumed run sees the same flipped batches, and
    the training noise stream is not touched. Each epoch's indices reach the device in one non-blocking copy: no host
    synchronisation between batches. Batches are (images in [-1, 1], labels) or (images,).
    """

    def __init__(self, data: ImageTensors, batch_size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", drop_last: bool = True):
        self.dataset, self.batch_size, self.seed, self.drop_last = data, batch_size, seed, drop_last
        self.sampler = EpochSampler(len(data), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device) if data.labels is not None else None

    def __len__(self) -> int:
        per_rank = self.sampler.num_samples // self.sampler.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        s = self.sampler
        order = s.order()  # this rank's share of the epoch
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + s.epoch) * 1_009 + s.rank)
        flips = torch.rand(len(order), generator=g) < 0.5 if self.dataset.flip else None
        order, start = self._to_device(order), s.start
        flips = self._to_device(flips) if flips is not None else None
        end = start + (len(order) - start) // self.batch_size * self.batch_size if self.drop_last else len(order)
        for i in range(start, end, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.images[idx].float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
            if flips is not None:
                x = torch.where(flips[i : i + self.batch_size].view(-1, 1, 1, 1), x.flip(-1), x)
            yield (x, self.labels[idx]) if self.labels is not None else (x,)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    device: str | torch.device = "cpu",
) -> DataLoader | DeviceLoader:
    """Per-rank batches of `batch_size` in a resumable order: a DeviceLoader on `device` for an ImageTensors data set,
    else a DataLoader with an EpochSampler."""
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)
    if len(sampler) < batch_size and drop_last:
        raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: lower --batch-size")
    if isinstance(dataset, ImageTensors):
        return DeviceLoader(dataset, batch_size, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                            device=device, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # The loader's own generator: creating an iterator must not consume the global RNG the training step uses.
        generator=torch.Generator().manual_seed(seed),
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file (the MNIST format: big-endian header, then uint8 data), gzipped or not; anything else, a
    truncated file included, is refused naming the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); download it again") from exc
    magic = int.from_bytes(data[0:4], "big")
    if len(data) < 4 or magic != 0x0800 | ndim:  # 0x08 = unsigned bytes, then the number of dimensions
        raise ValueError(f"{path} is not an idx file of {ndim}-d unsigned bytes (magic number {magic:#x}, expected "
                         f"{0x0800 | ndim:#x}); is it the right MNIST file?")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(f"{path} holds {len(data)} bytes but its header {dims} needs {expected}: the file is "
                         "truncated or damaged; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_mnist_arrays(root: str | os.PathLike, split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (images uint8 (N, 28, 28), labels int64 (N,)).

    Looks for the four idx files (.gz or not) in `root`, `root/MNIST/raw` and `root/raw`; otherwise asks torchvision
    (which downloads into `root` when `download`). Raises FileNotFoundError saying where it looked and how to fix it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    if root.is_file():
        raise FileNotFoundError(f"the MNIST folder {root} is a file: give the folder that holds the four idx files "
                                "(--data-root DIR)")
    looked = [root, root / "MNIST" / "raw", root / "raw"]
    for folder in looked:
        img, lab = _find_idx(folder, MNIST_FILES[split, "images"]), _find_idx(folder, MNIST_FILES[split, "labels"])
        if img and lab:
            images, labels = _read_idx(img, 3), _read_idx(lab, 1)
            if len(images) != len(labels):
                raise ValueError(f"{img} holds {len(images)} images but {lab} holds {len(labels)} labels: the files "
                                 "do not belong together")
            if labels.size and labels.max() > 9:
                raise ValueError(f"{lab} holds label {labels.max()}, outside MNIST's 0..9: is it the right file?")
            return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
    error = None
    if download:
        try:
            from torchvision.datasets import MNIST

            ds = MNIST(str(root), train=split == "train", download=True)
            return ds.data, ds.targets
        except Exception as exc:  # no network, a proxy, a full disk: all end in the same advice
            error = exc
    raise FileNotFoundError(
        f"MNIST ({split}) not found: looked for {MNIST_FILES[split, 'images']}[.gz] and "
        f"{MNIST_FILES[split, 'labels']}[.gz] in " + ", ".join(str(p) for p in looked)
        + (f"; the download into {root} failed ({type(error).__name__}: {_one_line(error)})" if error
           else "; download disabled")
        + ". Fix: pass --data-root (or root=) a folder holding the four MNIST idx files, or allow the download."
    )


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def mnist(
    root: str | os.PathLike = "data",
    *,
    batch_size: int = 128,
    split: str = "train",
    pad_to_32: bool = False,
    download: bool = True,
    with_labels: bool = True,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader of MNIST batches (images (B, 1, 28, 28) in [-1, 1], labels (B,)), kept in memory.

    `pad_to_32` pads with the background value to 32x32 for networks that need a power-of-two side.
    """
    return make_loader(
        mnist_dataset(root, split=split, pad_to_32=pad_to_32, download=download, with_labels=with_labels),
        batch_size, seed=seed, shuffle=shuffle, num_workers=num_workers, rank=rank, world_size=world_size,
    )


def mnist_dataset(
    root: str | os.PathLike = "data", *, split: str = "train", pad_to_32: bool = False, download: bool = True, with_labels: bool = True
) -> ImageTensors:
    """MNIST in memory: uint8 images (N, 1, 28, 28) (items in [-1, 1]) and labels, never flipped."""
    images, labels = load_mnist_arrays(root, split, download)
    x = images.unsqueeze(1)  # (N, 1, 28, 28) uint8
    if pad_to_32:
        x = F.pad(x, (2, 2, 2, 2), value=0)  # the background, -1 in [-1, 1]
    return ImageTensors(x.contiguous(), labels if with_labels else None, classes=[str(d) for d in range(10)])


# ImageNet-9 (the 9 super-classes of ReBias, Bahng et al. 2020): 42 ImageNet-1k classes, by index in the sorted list of
# the 1000 WordNet ids, and the wnid of each. Label = super-class index in this order.
IMAGENET9: dict[str, dict[int, str]] = {
    "dog": {151: "n02085620", 207: "n02099601", 234: "n02106550", 235: "n02106662", 254: "n02110958"},
    "cat": {281: "n02123045", 282: "n02123159", 283: "n02123394", 284: "n02123597", 285: "n02124075"},
    "frog": {30: "n01641577", 31: "n01644373", 32: "n01644900"},
    "turtle": {33: "n01664065", 34: "n01665541", 35: "n01667114", 36: "n01667778", 37: "n01669191"},
    "bird": {89: "n01819313", 90: "n01820546", 94: "n01833805", 96: "n01843383", 97: "n01847000"},
    "monkey": {372: "n02486410", 373: "n02487347", 374: "n02488291", 375: "n02488702", 378: "n02492035"},
    "fish": {393: "n02607072", 394: "n02640242", 395: "n02641379", 396: "n02643566", 397: "n02655020"},
    "crab": {118: "n01978287", 119: "n01978455", 120: "n01980166", 121: "n01981276"},
    "insect": {306: "n02174001", 307: "n02177972", 308: "n02190166", 309: "n02206856", 310: "n02219486"},
}
IMAGENET9_CLASSES = list(IMAGENET9)


def image_transform(image_size: int, flip: bool = True):
    """Resize the short side, center crop, optional horizontal flip, scale to [-1, 1] (no ImageNet mean/std)."""
    from torchvision import transforms

    steps = [transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
             transforms.CenterCrop(image_size)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    return transforms.Compose(steps)


def open_rgb(path: str | os.PathLike):
    """Any image file as 8-bit RGB (PIL): 16- and 32-bit grayscale rescaled to 0..255 (not clipped, which turns them
    almost white), palettes expanded, transparency composited onto white, CMYK and grayscale converted."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        full = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if img.mode == "F" and values.max(initial=0) <= 1.0:
            full = 1.0
        img = Image.fromarray(np.clip(values / full * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively), sorted; hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFiles(Dataset):
    """(image, label) from a list of (path, label), transformed. An image that cannot be read is skipped: the next
    sample takes its place, and a warning names the file (the run goes on; remove or replace the file)."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform, *, root: Path | None = None,
                 image_size: int | None = None, flip: bool = False):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.root, self.image_size, self.flip = root, image_size, flip  # what decode() and in_memory() need

    def __len__(self) -> int:
        return len(self.samples)

    def digest(self, prefix: str) -> str:
        """A hash of `prefix` and every file's path (relative to the root), size and modification time: it changes
        when the data does."""
        digest = hashlib.sha256(prefix.encode())
        for path, _ in self.samples:
            stat = Path(path).stat()
            digest.update(f"{Path(path).relative_to(self.root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def decode(self, indices: list[int] | None = None, *, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """uint8 images (N, 3, S, S), resized and cropped but never flipped, their labels, and which samples they
        are: an unreadable file is left out with a warning naming it."""
        from torchvision.transforms import functional as TF
        from tqdm.auto import tqdm

        images, labels, kept = [], [], []
        for i in tqdm(range(len(self.samples)) if indices is None else indices, disable=not progress,
                      desc="decoding images", unit="img"):
            path, label = self.samples[i]
            try:
                image = TF.center_crop(TF.resize(open_rgb(path), self.image_size, TF.InterpolationMode.BICUBIC,
                                                 antialias=True), self.image_size)
            except Exception as exc:  # any decoder error: a truncated JPEG, a text file named .png, ...
                warnings.warn(f"skipping unreadable image {path} ({type(exc).__name__}: {exc})", stacklevel=2)
                continue
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            labels.append(label)
            kept.append(i)
        if not images:
            raise ValueError("no image of the data set can be read")
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64), kept

    def __getitem__(self, i: int):
        for k in range(len(self.samples)):
            path, label = self.samples[(i + k) % len(self.samples)]
            try:
                return self.transform(open_rgb(path)), label
            except Exception as exc:  # any decoder error: a truncated JPEG, a text file named .png, ...
                warnings.warn(f"skipping unreadable image {path} ({type(exc).__name__}: {exc})", stacklevel=2)
        raise ValueError("no image of the data set can be read")


def imagenet9_dataset(root: str | os.PathLike, image_size: int = 64, *, flip: bool = True) -> ImageFiles:
    """ImageNet-9 from an ImageNet-1k folder tree (one sub-folder per wnid, e.g. train/): 42 classes, labels 0..8."""
    root = Path(root).expanduser()
    if root.is_file():
        raise FileNotFoundError(f"the ImageNet folder {root} is a file: give the ImageNet-1k train (or val) folder")
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {root} does not exist. Expected an ImageNet-1k split laid out as "
                                f"{root}/n01641577/*.JPEG ... (one folder per WordNet id); pass it with --data-root")
    wnid_to_label = {wnid: label for label, name in enumerate(IMAGENET9_CLASSES) for wnid in IMAGENET9[name].values()}
    missing = [w for w in wnid_to_label if not (root / w).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {len(missing)} of the 42 ImageNet-9 class folders, e.g. {missing[:3]}. "
                                "Expected an ImageNet-1k train or val folder with one sub-folder per WordNet id")
    samples = [(path, label) for wnid, label in sorted(wnid_to_label.items()) for path in _image_files(root / wnid)]
    empty = sorted({IMAGENET9_CLASSES[label] for label in range(9)} - {IMAGENET9_CLASSES[lab] for _, lab in samples})
    if empty:
        raise FileNotFoundError(f"the ImageNet-9 class(es) {', '.join(empty)} have no images under {root}")
    return ImageFiles(samples, list(IMAGENET9_CLASSES), image_transform(image_size, flip), root=root,
                      image_size=image_size, flip=flip)


def image_folder_dataset(root: str | os.PathLike, image_size: int = 64, *, flip: bool = True) -> ImageFiles:
    """Your own images: class sub-folders give labels (sorted names -> 0..K-1); a flat folder gives label 0.

    A class folder without images is left out with a warning (the other classes keep consecutive labels). The
    dataset's `classes` lists the class names ([] for a flat folder).
    """
    root = Path(root).expanduser()
    if root.is_file():
        raise FileNotFoundError(f"the image folder {root} is a file: give a folder of images (or of class folders)")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass a folder of images (or of class folders)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        files = _image_files(root)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
        return ImageFiles([(f, 0) for f in files], [], image_transform(image_size, flip), root=root,
                          image_size=image_size, flip=flip)
    found = {d.name: _image_files(d) for d in subdirs}
    empty = [name for name, files in found.items() if not files]
    if empty:
        warnings.warn(f"class folder(s) {', '.join(empty)} in {root} hold no images and are left out", stacklevel=2)
    classes = [name for name in found if found[name]]
    if not classes:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root}")
    samples = [(f, label) for label, name in enumerate(classes) for f in found[name]]
    return ImageFiles(samples, classes, image_transform(image_size, flip), root=root, image_size=image_size,
                      flip=flip)


def in_memory(dataset: Dataset, *, max_bytes: float = 4 * 2**30, cache_dir: str | os.PathLike | None = None
              ) -> Dataset:
    """An image folder as an ImageTensors: decoded once (resized and cropped; flips stay random, per epoch) and
    cached beside the data (or in `cache_dir`, or the user's cache when the data folder is read-only), decoded again
    when a file changes. A data set that would need more than `max_bytes`, or is no image folder, is returned as it is.
    """
    if not isinstance(dataset, ImageFiles) or dataset.image_size is None or dataset.root is None:
        return dataset
    if len(dataset) * 3 * dataset.image_size**2 > max_bytes:
        return dataset
    digest = dataset.digest(f"decoded {dataset.image_size} {dataset.classes}")
    path = cache_folder(dataset.root, cache_dir) / f"images-{dataset.image_size}px-{digest[:16]}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("digest") == digest:
                return ImageTensors(saved["images"], saved["labels"], flip=dataset.flip, classes=dataset.classes)
        except Exception:  # a damaged cache file is decoded again
            pass
    images, labels, _ = dataset.decode(progress=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save({"digest": digest, "images": images, "labels": labels}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk: train from memory all the same
        warnings.warn(f"could not cache the decoded images in {path} ({exc}); they are decoded again next time",
                      stacklevel=2)
    finally:
        tmp.unlink(missing_ok=True)
    return ImageTensors(images, labels, flip=dataset.flip, classes=dataset.classes)


def colored_mnist(images: torch.Tensor, *, seed: int = 0, size: int = 32, offset: int = 0) -> torch.Tensor:
    """MNIST digits (N, 28, 28) uint8 as colour images (N, 3, size, size) uint8: each digit in one colour on a
    background of another, padded with the background to `size`. Deterministic: image i's colours come from a
    generator seeded with (seed, offset + i). The digit's luminance differs from the background's by at least 0.3,
    so a grayscale version still shows the digit (what colorization starts from)."""
    luma = torch.tensor([0.299, 0.587, 0.114])
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    pad = (size - images.shape[-1]) // 2
    for i, digit in enumerate(images):
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + i)
        while True:
            bg, fg = torch.rand(3, generator=g), torch.rand(3, generator=g)
            if abs(float(luma @ fg - luma @ bg)) >= 0.3:
                break
        mask = F.pad(digit.float() / 255, (pad, size - 28 - pad, pad, size - 28 - pad))  # (size, size)
        image = bg.view(3, 1, 1) * (1 - mask) + fg.view(3, 1, 1) * mask
        out[i] = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return out


def write_image_tree(images: torch.Tensor, labels: torch.Tensor, classes: list[str], root: str | os.PathLike) -> Path:
    """uint8 images (N, C, H, W) as PNGs in one sub-folder per class: the layout image_folder_dataset reads."""
    from PIL import Image

    root = Path(root)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(root / classes[label] / f"{i:06d}.png")
    return root
