"""The UEA/UCR archive's classification sets that sktime's wheel ships, read from the installed package.

Nothing is downloaded: a set is the official <Name>_TRAIN.ts and <Name>_TEST.ts under sktime/datasets/data/.
The files are parsed here, not by sktime, whose import takes about two seconds and whose reader lower-cases the class
labels (tests/test_timeseries_data.py checks this parser against it).

Layout: float32 (N, T, F) tensors, T the longest series of train and test together. A set of series of unequal length
(JapaneseVowels: 7..29 steps) is padded at the front, so the last real step is the last step and a recurrent model's
final hidden state, which the lstm and gru classifiers read, follows it; one more feature, last, is a 0/1 mask (1 on
real steps), so attention and recurrent models can tell padding from data, as one tensor per batch is all the
pipeline feeds. A set of equal-length series has no mask feature. Padded steps hold each channel's training mean,
so they standardise to exactly 0.

Statistics: each channel's mean and population std over every real step of every training series (the test split
uses them too); the mask's are 0 and 1, so standardising leaves it as it is. Labels: the class strings in sorted order
(numerically when all are numbers: PLAID's 0..10) map to 0..K-1, the same for both splits; a test class that train
lacks is an error, and so is a missing value: none of the shipped classification sets has one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class SeriesError(ValueError):
    """A set is missing or its .ts file cannot be used (one-line message)."""


@dataclass(frozen=True)
class SeriesSplits:
    """A set's official train and test splits as float32 (N, T, F) series and int64 labels, with their statistics."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...]  # one per feature, the mask's 0
    std: tuple[float, ...]  # one per feature, the mask's 1
    classes: tuple[str, ...]  # the class string of each label
    masked: bool  # the last feature is the padding mask


def folder() -> Path | None:
    """sktime's folder of archive sets, found without importing sktime; None when it is not installed."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def available() -> tuple[str, ...]:
    """Names of the classification sets sktime ships (both .ts files, class labels), sorted."""
    root = folder()
    if root is None or not root.is_dir():
        return ()
    return tuple(sorted(entry.name for entry in root.iterdir()
                        if all(_path(root, entry.name, split).is_file() for split in ("TRAIN", "TEST"))
                        and "classlabel" in _header(_path(root, entry.name, "TRAIN"))))


def load(name: str) -> SeriesSplits:
    """Set `name` (one of `available()`) as float32 series, padded and masked if of unequal length."""
    root = folder()
    if root is None:
        raise SeriesError("sktime is not installed (pip install sktime: its wheel carries the archive's sets)")
    (train, train_labels), (test, test_labels) = (_read(_path(root, name, split)) for split in ("TRAIN", "TEST"))
    if {len(case) for case in train + test} != {len(train[0])}:
        raise SeriesError(f"{name}: its series have different channel counts")
    classes = sorted(set(train_labels), key=_label_order(train_labels))
    index = {label: i for i, label in enumerate(classes)}
    if missing := sorted(set(test_labels) - set(index)):
        raise SeriesError(f"{name}: test classes {', '.join(missing)} do not occur in train ({', '.join(classes)})")
    real = np.concatenate(train, axis=1)
    mean, std = real.mean(1), real.std(1)
    std[std == 0] = 1.0  # a constant channel: centring makes it 0, and there is no spread to divide by
    steps = max(case.shape[1] for case in train + test)
    masked = len({case.shape[1] for case in train + test}) > 1
    if masked:
        mean, std = np.append(mean, 0.0), np.append(std, 1.0)
    return SeriesSplits(
        train_x=_pad(train, steps, mean, masked), train_y=torch.tensor([index[y] for y in train_labels]),
        test_x=_pad(test, steps, mean, masked), test_y=torch.tensor([index[y] for y in test_labels]),
        mean=tuple(mean.tolist()), std=tuple(std.tolist()), classes=tuple(classes), masked=masked,
    )


def _path(root: Path, name: str, split: str) -> Path:
    return root / name / f"{name}_{split}.ts"


def _header(path: Path) -> dict[str, list[str]]:
    """The lower-cased @keys of a .ts file whose value starts with true (and that value's words), up to @data."""
    keys = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if not words or not words[0].startswith("@"):
                continue
            key = words[0][1:].lower()
            if key == "data":
                break
            if words[1:2] and words[1].lower() == "true":
                keys[key] = words[2:]
    return keys


def _read(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Each case of a .ts file as a float64 (channels, steps) array, and its class string."""
    header = _header(path)
    if "timestamps" in header:
        raise SeriesError(f"{path}: timestamped series are not supported")
    cases, labels = [], []
    with path.open(encoding="utf-8") as f:
        data = False
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not data:
                data = line.lower().startswith("@data")
                continue
            if not line or line.startswith("#"):
                continue
            *channels, label = line.split(":")
            try:
                case = [[float(v) for v in channel.split(",")] for channel in channels]
            except ValueError as err:
                raise SeriesError(f"{path}: line {number}: {err} (missing values, '?', are not supported)") from None
            if not channels or len({len(channel) for channel in case}) != 1:
                raise SeriesError(f"{path}: line {number}: expected channels of one length before the class label")
            array = np.asarray(case)
            if np.isnan(array).any():
                raise SeriesError(f"{path}: line {number}: missing values (NaN) are not supported")
            cases.append(array)
            labels.append(label.strip())
    if not cases:
        raise SeriesError(f"{path}: no series after @data")
    return cases, labels


def _label_order(labels: list[str]) -> Callable[[str], Any]:
    """Sort key of class strings: numeric when every one is a number (10 after 9, not after 1), else the strings."""
    try:
        for label in labels:
            float(label)
    except ValueError:
        return str
    return float


def _pad(cases: list[np.ndarray], steps: int, fill: np.ndarray, masked: bool) -> Tensor:
    """(N, steps, F) float32 of the cases, each at the end; the steps before it hold `fill` (and mask 0)."""
    out = np.tile(fill.astype(np.float32), (len(cases), steps, 1))
    for i, case in enumerate(cases):
        length = case.shape[1]
        out[i, steps - length:, : case.shape[0]] = case.T
        if masked:
            out[i, steps - length:, -1] = 1.0
    return torch.from_numpy(out)
