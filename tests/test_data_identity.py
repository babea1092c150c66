"""Dataset.fingerprint and data.fingerprint(): the same content gives the same fingerprint, other content another."""

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import data
from benchmarks.data import fingerprint, load_dataset

# One mtime for every file, as files unpacked from one archive can share (tar keeps whole seconds).
ARCHIVE_MTIME_NS = 1_700_000_000 * 10**9


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _bmp_folder(root: Path, contents: dict[str, list[int]]) -> Path:
    """An image folder whose class `cls` holds 0.bmp, 1.bmp, ... with the pixels of `_pixels(seed)` for its seeds.

    BMP files of one size have one byte length, so folders built from different seeds share names and sizes.
    """
    for split in ("train", "test"):
        for cls, seeds in contents.items():
            (root / split / cls).mkdir(parents=True)
            for index, seed in enumerate(seeds):
                path = root / split / cls / f"{index}.bmp"
                Image.fromarray(_pixels(seed + (100 if split == "test" else 0))).save(path)
                os.utime(path, ns=(ARCHIVE_MTIME_NS, ARCHIVE_MTIME_NS))
    return root


def _listing(root: Path) -> list[tuple[str, int, int]]:
    """Relative path, size and mtime of every file: all the old cache key looked at."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    )


def _swap(a: Path, b: Path) -> None:
    a.rename(a.with_name("swap-tmp"))
    b.rename(a)
    a.with_name("swap-tmp").rename(b)


def _write_mnist(root: Path, seed: int) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 6), ("t10k", 4)):
        for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, n))):
            magic = 0x0800 | array.ndim
            header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
            (raw / f"{split}-{kind}-idx{array.ndim}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())
    return root


def test_same_data_loaded_twice_gives_one_fingerprint_whatever_the_split():
    plain = load_dataset("digits")
    split = load_dataset("digits", val_fraction=0.2, seed=3)
    assert len(plain.fingerprint) == 16 and int(plain.fingerprint, 16) >= 0
    # The validation split is config (val_fraction, seed), not data: it leaves the fingerprint alone.
    assert split.fingerprint == plain.fingerprint == load_dataset("digits").fingerprint == fingerprint("digits")


def test_swapped_labels_with_same_names_and_sizes_differ(tmp_path):
    cache = str(tmp_path / "cache")
    first = _bmp_folder(tmp_path / "a", {"cat": [1, 2], "dog": [3, 4]})
    second = _bmp_folder(tmp_path / "b", {"cat": [3, 4], "dog": [1, 2]})
    assert [row[1:] for row in _listing(first)] == [row[1:] for row in _listing(second)]
    a, b = (load_dataset(f"imagefolder:{folder}", cache_dir=cache) for folder in (first, second))
    assert torch.equal(a.train_y, b.train_y) and not torch.equal(a.train_x, b.train_x)
    assert a.fingerprint != b.fingerprint


def test_same_folder_at_another_path_gives_the_same_fingerprint(tmp_path):
    cache = str(tmp_path / "cache")
    original = _bmp_folder(tmp_path / "a", {"cat": [1, 2], "dog": [3]})
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, copy)
    here, there = (load_dataset(f"imagefolder:{folder}", cache_dir=cache) for folder in (original, copy))
    assert len(list(Path(cache).glob("*.pt"))) == 2  # decoded at each path: the cache is per folder
    assert here.fingerprint == there.fingerprint == fingerprint(f"imagefolder:{copy}", cache_dir=cache)


def test_class_folders_swapped_in_place_change_the_fingerprint(tmp_path):
    # Same file names, sizes and mtimes in both classes: only which file sits at which path changes.
    folder = _bmp_folder(tmp_path / "img", {"cat": [1, 2], "dog": [3, 4]})
    name, cache = f"imagefolder:{folder}", str(tmp_path / "cache")
    before = load_dataset(name, cache_dir=cache)
    listing = _listing(folder)
    for split in ("train", "test"):
        _swap(folder / split / "cat", folder / split / "dog")
    assert _listing(folder) == listing
    after = load_dataset(name, cache_dir=cache)
    assert after.fingerprint != before.fingerprint
    # Not a stale cache: the images now labelled cat are those that were labelled dog.
    assert torch.equal(after.train_x[after.train_y == 0], before.train_x[before.train_y == 1])


def test_file_rewritten_in_place_with_its_mtime_restored_is_decoded_again(tmp_path):
    folder = _bmp_folder(tmp_path / "img", {"cat": [1], "dog": [2]})
    name, cache = f"imagefolder:{folder}", str(tmp_path / "cache")
    before = load_dataset(name, cache_dir=cache)
    path = folder / "train" / "cat" / "0.bmp"
    ctime = path.stat().st_ctime_ns
    Image.fromarray(_pixels(9)).save(path)  # same size, same inode (as cp -p onto an existing file)
    os.utime(path, ns=(ARCHIVE_MTIME_NS, ARCHIVE_MTIME_NS))
    if path.stat().st_ctime_ns == ctime:
        pytest.skip("the file system's ctime did not tick between the two writes")
    assert load_dataset(name, cache_dir=cache).fingerprint != before.fingerprint


def test_cached_load_reads_the_fingerprint_instead_of_hashing(tmp_path, monkeypatch):
    folder = _bmp_folder(tmp_path / "img", {"cat": [1], "dog": [2]})
    name, cache = f"imagefolder:{folder}", str(tmp_path / "cache")
    first = load_dataset(name, cache_dir=cache)

    def no_hash(*args):
        raise AssertionError("hashed again despite a valid cache")

    monkeypatch.setattr(data, "_content_fingerprint", no_hash)
    assert load_dataset(name, cache_dir=cache, val_fraction=0.5).fingerprint == first.fingerprint
    assert fingerprint(name, cache_dir=cache) == first.fingerprint


def test_mnist_roots_with_different_content_differ(tmp_path):
    one, other, same = (_write_mnist(tmp_path / root, seed) for root, seed in (("a", 0), ("b", 1), ("c", 0)))
    prints = {root: fingerprint("mnist", data_root=str(root), download=False) for root in (one, other, same)}
    assert prints[one] != prints[other] and prints[one] == prints[same]
    assert load_dataset("mnist", data_root=str(one), download=False).fingerprint == prints[one]
