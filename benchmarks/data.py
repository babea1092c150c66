"""In-memory datasets (uint8 images and image rows, float32 series and graphs), with batched normalization and
crop/flip augmentation."""

from __future__ import annotations

import hashlib
import math
import os
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from benchmarks import checkpoints, graphs, timeseries
from benchmarks.config import DEFAULT_CACHE_DIR
from benchmarks.errors import did_you_mean, one_line

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagefolder:<path>", "digits-seq", "mnist-seq", "uea:<Name>",
            "karate")
# Sequence datasets: the images of another dataset read as sequences of their rows, (N, rows, columns); the same
# splits, statistics and loading (in_shape = (time steps, features)).
SEQUENCES = {"digits-seq": "digits", "mnist-seq": "mnist"}
# What each dataset's loader takes in dataset_kwargs (with what it allows); a dataset not named takes none.
DATASET_OPTIONS = {"imagefolder": {"size": "an integer >= 1 or [height, width]: every image is resized (aspect kept) "
                                           "until it covers that size, then center-cropped to it"}}

# Per-channel statistics on the 0..1 scale. The digits values are those of its fixed 80/20 train split
# (population std over all train pixels); tests recompute them.
DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3760,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# Independent of the run seed so that every run of every method sees the same digits test set.
DIGITS_SPLIT_STATE = 0
PAD = 4  # zero padding of the random crop, as in the usual CIFAR recipe
_CACHE_VERSION = 2  # bump when the cached payload or its key changes so old caches are rebuilt
# Bump when what the fingerprint hashes changes: every cached model and run keyed by the old one is then redone.
_FINGERPRINT_VERSION = 1
FINGERPRINT_CHARS = 16  # hex digits kept of the SHA-256: 64 bits, ample to tell data sets apart
# torchvision's raw MNIST file of each split's images and labels (idx files, unsigned bytes, big-endian header).
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A dataset cannot be loaded or an argument is invalid (one-line message)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits and int64 labels on one device: uint8 (N, C, H, W) images or (N, T, F) image rows (mean
    and std per channel, on the 0..1 scale), or float32 (N, T, F) series or graphs (mean and std per feature F).

    `fingerprint` identifies the data's content (see `fingerprint()`), not the validation split carved from it.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    in_shape: tuple[int, ...]  # (C, H, W) of an image, (steps, features) of a sequence, (nodes, columns) of a graph
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_flip: bool
    fingerprint: str

    @property
    def images(self) -> bool:
        """Whether the samples are uint8 (C, H, W) images, the only ones random crops and flips apply to."""
        return holds_images(self.train_x)


def holds_images(x: Tensor) -> bool:
    """Whether `x` is a uint8 (N, C, H, W) batch of images."""
    return x.dtype == torch.uint8 and x.dim() == 4


def validation_view(data: Dataset) -> Dataset:
    """The data as tuning sees it: the validation split in the test split's place, and no test split at all.

    Everything that evaluates "test" data (training curves, the trained model's accuracy, the compressed
    model's) then reads validation data, and nothing of the real test split can be forwarded. The view's
    fingerprint covers the held-out images, so whatever it trains is cached apart from the reported runs.
    """
    if not len(data.val_y):
        raise DataError(f"dataset {data.name!r}: tuning needs a validation split (val_fraction > 0)")
    digest = hashlib.sha256(f"validation view of {data.fingerprint}\n".encode())
    for tensor in (data.val_x, data.val_y):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8))
    empty_x, empty_y = data.val_x[:0], data.val_y[:0]
    return replace(data, test_x=data.val_x, test_y=data.val_y, val_x=empty_x, val_y=empty_y,
                   fingerprint=digest.hexdigest()[:FINGERPRINT_CHARS])


@dataclass(frozen=True)
class _Splits:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_flip: bool
    num_classes: int
    fingerprint: str | None = None  # set by a loader that has it cached, else computed by _load_splits


def load_dataset(
    name: str,
    *,
    data_root: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = True,
    cache_dir: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load dataset `name` (see DATASETS) into memory, carving a stratified validation slice from train.

    `options` are the dataset's loader options (a config's dataset_kwargs; see DATASET_OPTIONS).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    splits = _load_splits(name, data_root, download, cache_dir, options)
    train_x, train_y, val_x, val_y = _split_val(splits.train_x, splits.train_y, val_fraction, seed)
    return Dataset(
        name=name,
        train_x=train_x.to(device),
        train_y=train_y.to(device),
        test_x=splits.test_x.to(device),
        test_y=splits.test_y.to(device),
        val_x=val_x.to(device),
        val_y=val_y.to(device),
        num_classes=splits.num_classes,
        in_shape=tuple(splits.train_x.shape[1:]),
        mean=splits.mean,
        std=splits.std,
        crop_flip=splits.crop_flip,
        fingerprint=splits.fingerprint,
    )


def fingerprint(
    name: str, data_root: str | None = None, cache_dir: str | None = None, *, download: bool = True,
    options: Mapping[str, Any] | None = None,
) -> str:
    """The content fingerprint of dataset `name`: 16 hex digits of a SHA-256, the same as `Dataset.fingerprint`.

    It hashes the decoded train and test samples and labels (dtype, shape and bytes, in load order) and the number
    of classes, before any validation split: the split follows from val_fraction and seed, which are config. The
    dataset's name and location are not hashed, so the same images at another path give the same fingerprint;
    any changed pixel, label, image order or class folder order gives another. An image folder's fingerprint is
    kept in its dataset cache, so after the first load this reads the cache instead of decoding or hashing.
    """
    return _load_splits(name, data_root, download, cache_dir, options).fingerprint


def check_available(name: str, data_root: str | None = None, options: Mapping[str, Any] | None = None) -> None:
    """Raise the DataError load_dataset would for a missing or invalid dataset, without decoding images."""
    if not _is_imagefolder(name):
        # digits is bundled, mnist and cifar are arrays read in well under a second (or downloaded, as
        # load_dataset would); an unknown name raises load_dataset's own error.
        load_dataset(name, data_root=data_root, options=options)
        return
    check_options(name, options)
    # Listing the folders runs every check of an image folder but decoding; decoding its images can take minutes.
    _list_splits(name, _imagefolder_path(name, data_root).resolve())


def check_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dataset's loader options, checked (a one-line DataError naming the bad dataset_kwargs key or value)."""
    options = dict(options or {})
    kind = "imagefolder" if _is_imagefolder(name) else name
    allowed = DATASET_OPTIONS.get(kind, {})
    for key in options:
        if key not in allowed:
            takes = f"takes only {', '.join(allowed)}" if allowed else "takes none"
            raise DataError(f"dataset_kwargs.{key}: dataset {name!r} {takes} (imagefolder: datasets take size)")
    if "size" in options and _size(options["size"]) is None:
        raise DataError(f"dataset_kwargs.size must be {allowed['size']}; got {options['size']!r}")
    return options


def _size(value: Any) -> tuple[int, int] | None:
    """(height, width) of a size option (an int is square), None when invalid."""
    sides = [value, value] if not isinstance(value, list | tuple) else list(value)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        return None
    return sides[0], sides[1]


def _load_splits(name: str, data_root: str | None, download: bool, cache_dir: str | None,
                 options: Mapping[str, Any] | None = None) -> _Splits:
    options = check_options(name, options)
    root = data_root if data_root is not None else "data"  # torchvision datasets default to ./data
    if name == "digits":
        splits = _load_digits()
    elif name == "mnist":
        splits = _load_mnist(root, download)
    elif name in ("cifar10", "cifar100"):
        splits = _load_cifar(name, root, download)
    elif name in SEQUENCES:
        images = _load_splits(SEQUENCES[name], data_root, download, cache_dir)
        splits = replace(images, train_x=images.train_x.squeeze(1), test_x=images.test_x.squeeze(1), fingerprint=None)
    elif _is_imagefolder(name):
        size = _size(options["size"]) if "size" in options else None
        splits = _load_imagefolder(name, _imagefolder_path(name, data_root), cache_dir, size)
    elif name.startswith("uea:"):
        splits = _load_uea(name)
    elif name == "karate":
        splits = _load_karate()
    else:
        sets = timeseries.available()
        near = did_you_mean(name, [*DATASETS, *(f"uea:{set_name}" for set_name in sets)])
        raise DataError(f"unknown dataset {name!r}{near}; choose one of: {', '.join(DATASETS)} "
                        f"(<Name>: {', '.join(sets) or 'none, sktime is not installed'})")
    _check_splits(name, splits)
    if splits.fingerprint is None:
        tensors = (splits.train_x, splits.train_y, splits.test_x, splits.test_y)
        splits = replace(splits, fingerprint=_content_fingerprint(*tensors, splits.num_classes))
    return splits


def _check_splits(name: str, splits: _Splits) -> None:
    # torchvision checks neither count nor range; a label out of range only fails later, deep in the loss.
    for split in ("train", "test"):
        x, y = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
        if len(x) != len(y):
            raise DataError(f"dataset {name!r}: the {split} split has {len(x)} images but {len(y)} labels")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < splits.num_classes:
            raise DataError(
                f"dataset {name!r}: {split} labels span {int(y.min())}..{int(y.max())}; "
                f"they must lie in 0..{splits.num_classes - 1}"
            )


def _content_fingerprint(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int) -> str:
    digest = hashlib.sha256(f"lorita-bench data v{_FINGERPRINT_VERSION}\nclasses {num_classes}\n".encode())
    fields = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    for field, tensor in fields.items():
        array = tensor.detach().cpu().contiguous().numpy()
        # Labels in a fixed byte order, so the fingerprint does not depend on the machine's.
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        # The header fixes each field's byte length, so no two different data sets hash the same byte stream.
        digest.update(f"{field} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def _is_imagefolder(name: str) -> bool:
    return name.startswith("imagefolder:") and name != "imagefolder:"


def _imagefolder_path(name: str, data_root: str | None) -> Path:
    folder = Path(name.removeprefix("imagefolder:")).expanduser()
    # A relative folder is looked up under data_root when one is given, else under the cwd.
    if data_root is not None and not folder.is_absolute():
        folder = Path(data_root) / folder
    return folder


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Standardize a batch to float32: uint8 (N, C, H, W) images scaled to 0..1 per channel, uint8 (N, T, F) one-channel
    image rows by their one statistic, float32 (N, T, F) series or graphs per feature (the last dimension)."""
    if x.dtype == torch.uint8:
        image = x.dim() == 4
        channels, unit = x.shape[1] if image else 1, "channel"
        shape = (1, -1, 1, 1) if image else (1, 1, 1)
        scaled = x.float() / 255.0
    elif x.dtype == torch.float32 and x.dim() == 3:
        channels, unit, shape, scaled = x.shape[-1], "feature", (1, 1, -1), x
    else:
        raise DataError(f"x must be uint8 images or image rows, or float32 (N, T, F) series; got {x.dtype} "
                        f"{tuple(x.shape)}")
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean and std need one value per {unit} ({channels}), got {len(mean)} and {len(std)}")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return (scaled - m) / s


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    skip: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield normalized float32 batches on x's device; all randomness comes from the CPU `generator`.

    The first `skip` batches are not built but draw the same random numbers, so a run resumed mid-epoch sees
    exactly the batches an uninterrupted one would.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if augment and not holds_images(x):
        # Else random_crop_flip fails deep inside with a shape error: crops and flips are of images only.
        raise DataError(f"budget.augment crop_flip needs uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}; "
                        "use auto or none")
    n = x.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    for i, start in enumerate(range(0, n, batch_size)):
        idx = order[start : start + batch_size]
        if drop_last and idx.numel() < batch_size:
            break
        if i < skip:
            if augment:
                _crop_draws(idx.numel(), generator)
            continue
        # index_select is ~30x faster than advanced indexing for a batch of rows on the CPU.
        xb = x.index_select(0, idx)
        if augment:
            xb = random_crop_flip(xb, generator)
        yield normalize(xb, mean, std), y.index_select(0, idx)


def _crop_draws(b: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Row offsets, column offsets and flips of `b` crops, drawn on the CPU so the stream is device-independent."""
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    return dy, dx, torch.rand(b, generator=generator) < 0.5


def random_crop_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random crop after PAD-pixel zero padding plus random horizontal flip of every image in a batch."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    dy, dx, flip = (t.to(x.device) for t in _crop_draws(b, generator))
    # Every crop position is a view of the padded batch; picking one per image is a single gather.
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (b, c, 2*PAD+1, 2*PAD+1, h, w)
    crops = windows[torch.arange(b, device=x.device), :, dy, dx]
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 (N, C, H, W) images on the 0..1 scale."""
    # From per-channel histograms of the 256 levels: exact, and ten times faster than float64 sums.
    hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])])
    hist = hist.cpu().double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    count = hist[0].sum()
    mean = hist @ levels / count
    std = (hist @ levels.square() / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _split_val(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if fraction == 0.0:
        return x, y, x[:0], y[:0]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    is_val = torch.zeros(len(y), dtype=torch.bool)
    for label in torch.unique(y):
        members = perm[y[perm] == label]
        is_val[members[: round(len(members) * fraction)]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def _load_digits() -> _Splits:
    # Imported here: scikit-learn adds about a second to every start and only digits needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=DIGITS_SPLIT_STATE
    )
    return _Splits(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y).long(),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y).long(),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        crop_flip=False,
        num_classes=10,
    )


def _load_uea(name: str) -> _Splits:
    set_name, sets = name.removeprefix("uea:"), timeseries.available()
    if set_name not in sets:
        where = "sktime's wheel" if sets else "sktime's wheel: sktime is not installed"
        raise DataError(f"dataset {name!r}: no classification set {set_name!r} in {where}"
                        f"{did_you_mean(set_name, sets)}; choose one of: {', '.join(sets) or 'none'}")
    try:
        series = timeseries.load(set_name)
    except timeseries.SeriesError as err:
        raise DataError(f"dataset {name!r}: {err}") from None
    return _Splits(train_x=series.train_x, train_y=series.train_y, test_x=series.test_x, test_y=series.test_y,
                   mean=series.mean, std=series.std, crop_flip=False, num_classes=len(series.classes))


def _load_karate() -> _Splits:
    train_x, train_y, test_x, test_y = graphs.karate_club()
    # Zeros and ones: standardising would change the adjacency and the one-hot columns, which are exact as they are.
    features = train_x.shape[-1]
    return _Splits(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, mean=(0.0,) * features,
                   std=(1.0,) * features, crop_flip=False, num_classes=len(graphs.KARATE_CLUBS))


def _torchvision_splits(name: str, cls: type, root: str, download: bool, expected: str) -> tuple[Any, Any]:
    try:
        return cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as err:
        if "not found" not in str(err):  # torchvision's words for a missing (or, for CIFAR, md5-failing) copy
            raise DataError(f"dataset {name!r}: cannot read the copy under {expected}: {one_line(err)}") from None
        failure = "download disabled"
    except Exception as err:  # noqa: BLE001 - files present but unreadable: a download would not replace them
        raise DataError(
            f"dataset {name!r}: cannot read the copy under {expected}: {one_line(err, kind=True)}"
        ) from None
    if download:
        try:
            return cls(root, train=True, download=True), cls(root, train=False, download=True)
        except (OSError, RuntimeError) as err:
            # torchvision's MNIST error spans lines; the last one holds the cause
            lines = str(err).strip().splitlines()
            failure = f"download failed: {lines[-1].strip() if lines else type(err).__name__}"
    raise DataError(
        f"dataset {name!r}: no valid copy under {expected}; put them there or run with network access ({failure})"
    )


def _load_mnist(root: str, download: bool) -> _Splits:
    raw = os.path.join(os.path.abspath(root), "MNIST", "raw")
    paths = {split: tuple(os.path.join(raw, f) for f in files) for split, files in _MNIST_FILES.items()}
    if all(os.path.isfile(path) for pair in paths.values() for path in pair):
        # Read here, not by torchvision: it checks neither magic numbers nor counts, and fails with bare asserts.
        (train_x, train_y), (test_x, test_y) = (_read_mnist_split(*paths[split]) for split in ("train", "test"))
    else:
        # Missing files: torchvision downloads them (or reads its old processed layout) when allowed.
        files = ", ".join(f for pair in _MNIST_FILES.values() for f in pair)
        train, test = _torchvision_splits(
            "mnist", torchvision.datasets.MNIST, root, download, f"{raw} (expected {files})"
        )
        train_x, train_y, test_x, test_y = train.data, train.targets, test.data, test.targets
    return _Splits(
        train_x=train_x.unsqueeze(1).contiguous(),
        train_y=train_y.long(),
        test_x=test_x.unsqueeze(1).contiguous(),
        test_y=test_y.long(),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        crop_flip=False,
        num_classes=10,
    )


def _read_mnist_split(images_path: str, labels_path: str) -> tuple[Tensor, Tensor]:
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(
            f"dataset 'mnist': {labels_path} has {len(labels)} labels but {images_path} has {len(images)} images"
        )
    if len(labels) and labels.max() > 9:
        index = int(np.argmax(labels > 9))
        raise DataError(f"dataset 'mnist': {labels_path} has label {labels[index]} at index {index}; MNIST's are 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file with `ndim` dimensions (magic 0x0800 | ndim); DataError naming the file."""
    try:
        with open(path, "rb") as f:
            content = bytearray(f.read())  # writable, so torch.from_numpy shares it without a warning
    except OSError as err:
        raise DataError(f"dataset 'mnist': cannot read {path}: {one_line(err)}") from None
    header = 4 * (ndim + 1)
    if len(content) < header:
        raise DataError(f"dataset 'mnist': {path} has {len(content)} bytes, fewer than its {header}-byte idx header")
    expected = 0x0800 | ndim  # 0x08: unsigned bytes
    magic = int.from_bytes(content[:4], "big")
    if magic != expected:
        raise DataError(
            f"dataset 'mnist': {path} has magic number 0x{magic:08x}, expected 0x{expected:08x} "
            f"(an idx file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header])
    if len(content) - header != math.prod(shape):
        raise DataError(
            f"dataset 'mnist': {path} header says {'x'.join(map(str, shape))} ({math.prod(shape)} bytes) "
            f"but it holds {len(content) - header} bytes of data"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _load_cifar(name: str, root: str, download: bool) -> _Splits:
    if name == "cifar10":
        cls, folder, files = torchvision.datasets.CIFAR10, "cifar-10-batches-py", "data_batch_1..5, test_batch"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
        files += ", batches.meta"
    else:
        cls, folder, files = torchvision.datasets.CIFAR100, "cifar-100-python", "train, test, meta"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    where = f"{os.path.join(os.path.abspath(root), folder)} (expected {files}, matching torchvision's md5 sums)"
    train, test = _torchvision_splits(name, cls, root, download, where)
    return _Splits(
        train_x=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_y=torch.tensor(train.targets, dtype=torch.long),
        test_x=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_y=torch.tensor(test.targets, dtype=torch.long),
        mean=mean,
        std=std,
        crop_flip=True,
        num_classes=len(train.classes),
    )


def _load_imagefolder(name: str, folder: Path, cache_dir: str | None, size: tuple[int, int] | None = None) -> _Splits:
    folder = folder.resolve()
    train_files, test_files, classes = _list_splits(name, folder)
    cache_root = Path(cache_dir or os.environ.get("LORITA_BENCH_CACHE") or DEFAULT_CACHE_DIR)
    cache = cache_root / f"imagefolder-{_cache_key(folder, train_files + test_files, size)}.pt"
    payload = _read_cache(cache)
    if payload is None:
        payload = _decode_imagefolder(name, train_files, test_files, len(classes), size)
        _write_cache(cache, payload)
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    c, h, w = payload["train_x"].shape[1:]
    return _Splits(
        train_x=payload["train_x"],
        train_y=payload["train_y"],
        test_x=payload["test_x"],
        test_y=payload["test_y"],
        mean=mean,
        std=std,
        crop_flip=c == 3 and h >= 32 and w >= 32,
        num_classes=len(classes),
        fingerprint=payload["fingerprint"],
    )


def _cache_key(folder: Path, files: list[tuple[str, int]], size: tuple[int, int] | None = None) -> str:
    key = hashlib.sha256(f"v{_CACHE_VERSION}\n{folder}\n".encode())
    if size is not None:  # only when set: the caches of folders loaded at their own size keep their keys
        key.update(f"size {size[0]}x{size[1]}\n".encode())
    skip = len(str(folder)) + 1
    for path, _ in files:
        stat = os.stat(path)
        # Size and mtime alone miss two class folders swapped in place when their files share names, sizes and
        # mtimes (as files unpacked from one archive can): the inode at each path changes then. The ctime, which
        # no tool can set back, catches a file rewritten in place with its mtime restored (cp -p, rsync -t).
        key.update(f"{path[skip:]}\t{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ino}\t{stat.st_ctime_ns}\n".encode())
    return key.hexdigest()[:24]


def _list_splits(name: str, folder: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    train_files, classes = _list_split(name, folder, "train", None)
    test_files, _ = _list_split(name, folder, "test", classes)
    # Checked after the layout, whose errors say what to fix first: one class is a layout, but no classification.
    if len(classes) < 2:
        raise DataError(
            f"dataset {name!r}: needs at least 2 classes; found 1: {classes[0]} (in {folder / 'train'})"
        )
    return train_files, test_files, classes


def _list_split(
    name: str, folder: Path, split: str, classes: list[str] | None
) -> tuple[list[tuple[str, int]], list[str]]:
    base = folder / split
    if not base.is_dir():
        raise DataError(f"dataset {name!r}: missing folder {base} (expected {split}/<class>/<image> files)")
    found = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
    if classes is not None and found != classes:
        raise DataError(f"dataset {name!r}: classes in {base} {found} differ from those in train {classes}")
    if not found:
        raise DataError(f"dataset {name!r}: no class folders in {base}")
    files = []
    # Same walk and ordering as torchvision's ImageFolder, so labels and order match it. Plain strings, not
    # Path objects: pathlib made listing 60,000 files take seconds.
    for label, cls in enumerate(found):
        count = len(files)
        for directory, _, names in sorted(os.walk(base / cls, followlinks=True)):
            for fname in sorted(names):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    files.append((os.path.join(directory, fname), label))
        if len(files) == count:
            raise DataError(
                f"dataset {name!r}: class folder {base / cls} has no image files ({', '.join(IMG_EXTENSIONS)})"
            )
    return files, found


def _decode_imagefolder(
    name: str, train: list[tuple[str, int]], test: list[tuple[str, int]], num_classes: int,
    resize: tuple[int, int] | None = None,
) -> dict:
    images = []
    size = None
    for path, _ in tqdm(train + test, desc=f"decoding {name}", unit="img", leave=False):
        array = _decode_image(name, path)
        if resize is not None:
            array = _cover_and_crop(array, resize)
        gray = array.ndim == 2
        if size is None:
            size, first = array.shape[:2], path
        elif array.shape[:2] != size:
            raise DataError(
                f"dataset {name!r}: {path} is {array.shape[1]}x{array.shape[0]} but {first} is "
                f"{size[1]}x{size[0]}; all images must share one size (or set dataset_kwargs.size, e.g. "
                f"--set dataset_kwargs.size={min(size)}, to resize and center-crop them)"
            )
        images.append(array[None] if gray else array.transpose(2, 0, 1))
    channels = max(image.shape[0] for image in images)
    # A folder mixing grayscale and colour images becomes RGB throughout.
    stacked = torch.from_numpy(np.stack([np.broadcast_to(image, (channels, *size)) for image in images]))
    labels = torch.tensor([label for _, label in train + test], dtype=torch.long)
    train_x, test_x = stacked[: len(train)].clone(), stacked[len(train) :].clone()
    train_y, test_y = labels[: len(train)].clone(), labels[len(train) :].clone()
    mean, std = channel_stats(train_x)
    return {
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "mean": list(mean),
        "std": list(std),
        # Hashed once here and cached with the images, so a cached load neither decodes nor rehashes.
        "fingerprint": _content_fingerprint(train_x, train_y, test_x, test_y, num_classes),
    }


def _cover_and_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`array` resized (bilinear, aspect kept) until it covers `size` (height, width), then center-cropped to it."""
    h, w = array.shape[:2]
    scale = max(size[0] / h, size[1] / w)
    covered = (max(size[1], round(w * scale)), max(size[0], round(h * scale)))  # PIL sizes are (width, height)
    image = Image.fromarray(array)
    if covered != (w, h):
        image = image.resize(covered, Image.Resampling.BILINEAR)
    left, top = (covered[0] - size[1]) // 2, (covered[1] - size[0]) // 2
    return np.asarray(image.crop((left, top, left + size[1], top + size[0])))


# PIL modes of one channel (decoded as grayscale); of 16-bit unsigned pixels among them; with alpha (dropped, as
# torchvision's ImageFolder loader drops it).
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _decode_image(name: str, path: str) -> np.ndarray:
    """(H, W) grayscale or (H, W, 3) RGB uint8 pixels of one image file; DataError naming it when unreadable.

    16-bit pixels are scaled to 8 bits (v -> round(v / 257), which inverts the usual 8-to-16-bit widening); a palette
    image becomes RGB; an alpha channel is dropped.
    """
    try:
        with Image.open(path) as img:
            if img.mode == "F":
                raise DataError(f"dataset {name!r}: {path} holds 32-bit float pixels (PIL mode F), which have no fixed "
                                "range: save it with 8- or 16-bit pixels")
            if img.mode in _WIDE_MODES:
                # PIL's own conversion of these to L clips at 255 instead of scaling: most pixels would be white.
                wide = np.asarray(img).astype(np.int64).clip(0, 65535)
                return ((wide + 128) // 257).astype(np.uint8)
            return np.asarray(img.convert("L" if img.mode in _GRAY_MODES else "RGB"))
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL reports a bad file as OSError, SyntaxError, ValueError and more
        cause = "not an image format PIL recognizes" if isinstance(err, UnidentifiedImageError) else one_line(err)
        raise DataError(f"dataset {name!r}: cannot decode image {path}: {cause}") from None


def _read_cache(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        payload = checkpoints.load(path)
        _check_payload(payload)
    except Exception as err:  # any unreadable or malformed cache is rebuilt, never trusted
        warnings.warn(f"ignoring corrupt dataset cache {path} ({type(err).__name__}); rebuilding it", stacklevel=4)
        return None
    return payload


def _check_payload(payload: object) -> None:
    if not isinstance(payload, dict):
        raise TypeError("cache payload is not a dict")
    for split in ("train", "test"):
        x, y = payload[f"{split}_x"], payload[f"{split}_y"]
        if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.long or y.shape != x.shape[:1]:
            raise TypeError(f"cached {split} tensors have the wrong dtype or shape")
    if not len(payload["mean"]) == len(payload["std"]) == payload["train_x"].shape[1]:
        raise TypeError("cached mean/std do not match the channel count")
    if not isinstance(payload["fingerprint"], str) or len(payload["fingerprint"]) != FINGERPRINT_CHARS:
        raise TypeError("cached fingerprint is not a string of the expected length")


def _write_cache(path: Path, payload: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save(path, payload)
    except OSError as err:
        warnings.warn(f"could not write dataset cache {path} ({err}); continuing without it", stacklevel=4)
