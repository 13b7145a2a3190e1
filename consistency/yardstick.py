"""The quality yardstick for any labelled image data set (MNIST, ImageNet-9, colored MNIST, your own folder).

A small classifier is trained once on the data set's training split and cached (beside the data, or in a folder you
name; a change in the data retrains it). Samples are scored by the Fréchet distance between their features (the
classifier's 128-d penultimate layer) and those of held-out real images, the classifier's mean confidence, the
entropy of its predicted-class histogram (1 = all classes equally often) and, for class-conditional models, the
fraction read as the class asked for. These numbers compare runs on the same data set only; they are not the field's
Inception FID (see `inception_fid`, the optional extra, for that).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .metrics import frechet_distance, precision_recall


class Classifier(nn.Module):
    """A small CNN; with its defaults it is the MNIST yardstick's (about 99% test accuracy after two epochs).
    features() is the 128-d penultimate layer."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, 128)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.enable_grad()
def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10, *, epochs: int = 2,
                     batch_size: int = 128, seed: int = 0, min_steps: int = 300, progress: str = "") -> Classifier:
    """Train the classifier on images in [-1, 1] (N, C, H, W) with small random shifts (MNIST: about a minute on two
    CPU cores); a small data set gets more epochs, up to at least `min_steps` steps. `progress` names a progress bar
    (none when empty)."""
    torch.manual_seed(seed)
    model = Classifier(images.shape[1], images.shape[-1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size = min(batch_size, len(images))
    per_epoch = len(images) // batch_size
    epochs = max(epochs, math.ceil(min_steps / per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * per_epoch)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * per_epoch, disable=not progress, desc=f"training {progress}", unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(per_epoch):
            bar.update(1)
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = images[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()  # shift augmentation: robustness to offsets
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    bar.close()
    return model.eval()


@torch.no_grad()
def classifier_outputs(model: Classifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), softmax probabilities (N, K)) for images in [-1, 1] or uint8."""
    feats, probs = [], []
    for chunk in images.split(batch_size):
        chunk = chunk.float() / 127.5 - 1 if chunk.dtype == torch.uint8 else chunk.float()
        f = model.features(chunk)
        feats.append(f)
        probs.append(model.head(f).softmax(1))
    return torch.cat(feats), torch.cat(probs)


def class_statistics(probs: torch.Tensor) -> dict[str, float]:
    """Mean top-1 confidence, and the entropy of the predicted-class histogram divided by ln(K) (1 = all balanced)."""
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    p = hist / hist.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum() / math.log(probs.shape[1])
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": max(float(entropy), 0.0) + 0.0,
            "classes_seen": int((hist > 0).sum())}


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Splits:
    """A labelled data set as uint8 tensors: train (for the classifier) and held-out (the reference) images."""

    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    fingerprint: str  # changes when the data does


def mnist_splits(root: str | os.PathLike) -> Splits:
    """MNIST's train and test splits (the idx files; see consistency.data)."""
    from .data import MNIST_FILES, _find_idx, load_mnist_arrays

    train_x, train_y = load_mnist_arrays(root, "train", download=False)
    test_x, test_y = load_mnist_arrays(root, "test", download=False)
    digest = hashlib.sha256()
    for (split, kind), name in sorted(MNIST_FILES.items()):
        for folder in (Path(root), Path(root) / "MNIST" / "raw", Path(root) / "raw"):
            path = _find_idx(folder, name)
            if path:
                digest.update(path.read_bytes())
                break
    return Splits("mnist", train_x.unsqueeze(1), train_y, test_x.unsqueeze(1), test_y,
                  [str(d) for d in range(10)], digest.hexdigest())


def folder_splits(root: str | os.PathLike, image_size: int, *, dataset: str = "folder", holdout: float = 0.1) -> Splits:
    """An image folder (class sub-folders) or ImageNet-9, read at `image_size` (no flips). A deterministic `holdout`
    fraction of each class (chosen by a hash of the file's path) is held out as the reference."""
    from .data import image_folder_dataset, imagenet9_dataset

    make = imagenet9_dataset if dataset == "imagenet9" else image_folder_dataset
    data = make(root, image_size, flip=False)
    if len(data.classes) < 2:
        raise ValueError(f"the yardstick needs labelled data (class sub-folders) in {root}; found "
                         f"{len(data.classes)} class(es)")
    digest = data.digest(f"{dataset} {image_size} {holdout}")  # the split decides what it trained on
    held, kept = [], []
    for i, (path, _) in enumerate(data.samples):
        h = int(hashlib.md5(str(Path(path).relative_to(data.root)).encode()).hexdigest()[:8], 16) / 2**32
        (held if h < holdout else kept).append(i)
    train_x, train_y, _ = data.decode(kept)
    test_x, test_y, _ = data.decode(held)
    return Splits(dataset if dataset != "folder" else Path(root).name, train_x, train_y, test_x, test_y,
                  list(data.classes), digest)


# ---------------------------------------------------------------------------------------------------- the yardstick
class Yardstick:
    """A trained classifier and the features of the held-out real images: scores generated images."""

    def __init__(self, classifier: Classifier, splits: Splits, accuracy: float):
        self.classifier, self.splits, self.accuracy = classifier.eval(), splits, accuracy
        self.reference, _ = classifier_outputs(classifier, splits.test_images)

    @classmethod
    def load_or_train(cls, splits: Splits, cache_dir: str | os.PathLike, *, epochs: int = 2,
                      log: Callable[[str], None] = print) -> "Yardstick":
        """The cached classifier for these splits, or a new one (trained, then cached) when the data changed."""
        path = Path(cache_dir) / f"yardstick-{splits.name}-{splits.fingerprint[:16]}.pt"
        shape = tuple(splits.train_images.shape[1:])
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("fingerprint") == splits.fingerprint and tuple(saved["shape"]) == shape:
                model = Classifier(shape[0], shape[-1], len(splits.classes))
                model.load_state_dict(saved["state_dict"])
                return cls(model, splits, saved["accuracy"])
        bundled = bundled_classifier(splits, shape)  # MNIST's comes with the package: no minutes of training
        if bundled is not None:
            return cls(bundled[0], splits, bundled[1])
        t0 = time.time()
        model = train_classifier(splits.train_images.float() / 127.5 - 1, splits.train_labels, len(splits.classes),
                                 epochs=epochs, progress=f"the {splits.name} yardstick classifier (once per data set)")
        _, probs = classifier_outputs(model, splits.test_images)
        accuracy = float((probs.argmax(1) == splits.test_labels).float().mean())
        log(f"trained the {splits.name} yardstick classifier in {time.time() - t0:.0f} s: held-out accuracy "
            f"{accuracy:.4f}; cached in {path}")
        from .checkpoint import atomic_save

        atomic_save({"state_dict": model.state_dict(), "fingerprint": splits.fingerprint, "shape": list(shape),
                     "classes": splits.classes, "accuracy": accuracy}, path)
        return cls(model, splits, accuracy)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """FID, precision and recall (k = 3) in the classifier's feature space against the held-out images, class
        statistics, and (given the labels a class-conditional model was asked for) the fraction read as that class."""
        expected = tuple(self.splits.test_images.shape[1:])
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"the images are {tuple(images.shape[1:])} but this yardstick's data is {expected}")
        feats, probs = classifier_outputs(self.classifier, images)
        precision, recall = precision_recall(self.reference, feats)  # k = 3, the same features as the FID
        row = {"fid": frechet_distance(feats, self.reference), "precision": precision, "recall": recall,
               **class_statistics(probs), "n": len(images)}
        if labels is not None:
            row["label_agreement"] = float((probs.argmax(1) == labels.cpu()).float().mean())
        return row

    def references(self, n: int, seed: int = 0) -> list[dict]:
        """The scale: real training images (the floor) and uniform noise."""
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(self.splits.train_images), generator=g)[:n]
        noise = torch.randint(0, 256, (min(n, len(pick)), *self.splits.test_images.shape[1:]), generator=g,
                              dtype=torch.uint8)
        return [{"what": "floor: real training images", **self.score(self.splits.train_images[pick])},
                {"what": "noise: uniform random pixels", **self.score(noise)}]


def bundled_classifier(splits: Splits, shape: tuple[int, ...]) -> tuple[Classifier, float] | None:
    """The yardstick classifier that comes with the package for these exact splits (its fingerprint recorded in the
    file), in float32, and its held-out accuracy; None when there is none."""
    from .pretrained import BUNDLED

    path = BUNDLED / f"yardstick-{splits.name}.safetensors"
    if not path.is_file():
        return None
    from .pretrained import load_safetensors

    state, meta = load_safetensors(path, metadata=True)
    if meta.get("fingerprint") != splits.fingerprint or meta.get("shape") != json.dumps(list(shape)):
        return None
    state = {k: v.float() for k, v in state.items()}
    model = Classifier(shape[0], shape[-1], len(splits.classes))
    model.load_state_dict(state)
    return model.eval(), float(meta["accuracy"])


# ---------------------------------------------------------------------------------------------------- Inception FID
def inception_extractor(weights: str | os.PathLike | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch-fidelity's Inception-v3 (the StyleGAN / EDM `fid50k_full` network) as uint8 (N, 3, H, W) -> (N, 2048).

    The weights are downloaded on first use where the machine is online, or read from `weights` (the file
    pt_inception-2015-12-05-6726825d.pth). Install the extra with: pip install "consistency-models[fid]".
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise ValueError('Inception FID needs torch-fidelity: pip install "consistency-models[fid]"') from exc
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(weights) if weights else None)
    except Exception as exc:  # no network, a proxy, a wrong file
        raise ValueError(f"could not load the Inception weights ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
                         ": offline, pass --inception-weights PATH to the file pt_inception-2015-12-05-6726825d.pth")
    net.eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        return net(images)[0].double()

    return extract


@torch.no_grad()
def inception_fid(images: torch.Tensor, real: torch.Tensor, extractor: Callable[[torch.Tensor], torch.Tensor],
                  *, cache: str | os.PathLike | None = None, batch_size: int = 250) -> float:
    """The Fréchet distance between Inception features of generated and real uint8 images (grayscale repeated to
    RGB); the real images' mean and covariance are cached in `cache` (a .pt file) after the first call."""

    def features(x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return torch.cat([extractor(chunk) for chunk in x.split(batch_size)])

    stats = None
    if cache is not None and Path(cache).is_file():
        stats = torch.load(cache, map_location="cpu", weights_only=True)
        if stats.get("n") != len(real):
            stats = None
    if stats is None:
        f = features(real).double()
        stats = {"mu": f.mean(0), "cov": torch.cov(f.T), "n": len(real)}
        if cache is not None:
            from .checkpoint import atomic_save

            atomic_save(stats, cache)
    return frechet_distance(features(images).double(), (stats["mu"], stats["cov"]))
