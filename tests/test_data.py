import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from benchmarks import data
from benchmarks.data import DATASETS, DataError, batches, channel_stats, load_dataset, normalize, random_crop_flip

MNIST_10K = Path("/work/shared/data/mnist-10k")


# ---------------------------------------------------------------- digits and validation splits


def test_digits_split_sizes_stratification_and_constants():
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert int(ds.train_x.max()) == 255 and ds.in_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.val_x.shape == (0, 1, 8, 8) and ds.val_y.shape == (0,)
    assert not ds.crop_flip
    share = torch.bincount(ds.test_y, minlength=10) / torch.bincount(ds.train_y, minlength=10)
    assert torch.allclose(share, torch.full((10,), 0.25), atol=0.02)
    mean, std = channel_stats(ds.train_x)
    assert mean == pytest.approx(ds.mean, abs=1e-3) and std == pytest.approx(ds.std, abs=1e-3)


def test_digits_test_split_ignores_seed_and_is_deterministic():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)


def test_val_split_is_stratified_disjoint_and_seeded():
    full = load_dataset("digits")
    a = load_dataset("digits", val_fraction=0.2, seed=3)
    b = load_dataset("digits", val_fraction=0.2, seed=3)
    c = load_dataset("digits", val_fraction=0.2, seed=4)
    counts = torch.bincount(full.train_y, minlength=10)
    expected = torch.tensor([round(int(n) * 0.2) for n in counts])
    assert torch.equal(torch.bincount(a.val_y, minlength=10), expected)
    assert len(a.train_y) + len(a.val_y) == len(full.train_y)
    merged = torch.cat([a.train_x, a.val_x]).flatten(1)
    assert torch.equal(merged.sum(0), full.train_x.flatten(1).sum(0))
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_bad_val_fraction(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError, match="digits, mnist, cifar10, cifar100, imagefolder:<path>"):
        load_dataset("svhn")
    assert "mnist" in DATASETS


# ---------------------------------------------------------------- torchvision layouts


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte
    path.write_bytes(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


def test_mnist_raw_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 28, 28)) for split, n in (("train", 6), ("t10k", 4))}
    labels = {"train": np.array([0, 1, 2, 3, 4, 9]), "t10k": np.array([5, 6, 7, 8])}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    ds = load_dataset("mnist", data_root=str(tmp_path), download=False)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert np.array_equal(ds.test_x[:, 0].numpy(), images["t10k"])
    assert ds.train_y.tolist() == labels["train"].tolist() and ds.test_y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.mean == (0.1307,) and ds.std == (0.3081,) and not ds.crop_flip


def _mnist_raw(root: Path, train_labels: int = 6) -> Path:
    """A valid raw MNIST copy under root (6 train and 4 test digits); its raw folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n, m in (("train", 6, train_labels), ("t10k", 4, 4)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, m))
    return raw


def _one_line_error(**kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("download", [False, True])
def test_mnist_label_count_mismatch_names_both_files(tmp_path, download):
    raw = _mnist_raw(tmp_path, train_labels=5)
    message = _one_line_error(name="mnist", data_root=str(tmp_path), download=download)
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    assert message == f"dataset 'mnist': {labels} has 5 labels but {images} has 6 images"


@pytest.mark.parametrize("download", [False, True])
def test_mnist_bad_magic_names_the_file_and_blames_no_download(tmp_path, download):
    raw = _mnist_raw(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x0801) + path.read_bytes()[4:])
    message = _one_line_error(name="mnist", data_root=str(tmp_path), download=download)
    assert message.startswith(f"dataset 'mnist': {path} has magic number 0x00000801, expected 0x00000803")
    assert "download" not in message


@pytest.mark.parametrize("download", [False, True])
def test_mnist_truncated_file_names_it_and_blames_no_download(tmp_path, download):
    # torchvision reads this one with a RuntimeError that read as "download failed" though none was tried.
    raw = _mnist_raw(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-28 * 28])
    message = _one_line_error(name="mnist", data_root=str(tmp_path), download=download)
    assert message == f"dataset 'mnist': {path} header says 6x28x28 (4704 bytes) but it holds 3920 bytes of data"


def test_mnist_label_out_of_range_names_the_file(tmp_path):
    raw = _mnist_raw(tmp_path)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2, 12, 3]))
    message = _one_line_error(name="mnist", data_root=str(tmp_path), download=False)
    assert message == f"dataset 'mnist': {raw / 't10k-labels-idx1-ubyte'} has label 12 at index 2; MNIST's are 0..9"


def test_missing_mnist_is_one_line_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_root=str(tmp_path), download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message and "t10k-labels-idx1-ubyte" in message


def test_missing_cifar_is_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python \(expected train, test, meta") as info:
        load_dataset("cifar100", data_root=str(tmp_path), download=False)
    assert "\n" not in str(info.value)


def test_cifar10_pickle_layout(tmp_path, monkeypatch):
    # torchvision checks every CIFAR file against the md5 of the real release, which synthetic files cannot
    # match; the loading code under test starts after that check, so only the check is replaced here.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for index, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        rows[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)  # each row: R plane, G plane, B plane
        entry = {"data": rows[name], "labels": [index, 9 - index]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    ds = load_dataset("cifar10", data_root=str(tmp_path), download=False)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    assert np.array_equal(ds.test_x.numpy(), rows["test_batch"].reshape(2, 3, 32, 32))
    assert ds.train_y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert ds.num_classes == 10 and ds.crop_flip and ds.mean == data.CIFAR10_MEAN


def test_unreadable_cifar_blames_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    message = _one_line_error(name="cifar10", data_root=str(tmp_path), download=True)
    assert message.startswith(f"dataset 'cifar10': cannot read the copy under {folder} (expected data_batch_1..5")
    assert message.endswith("UnpicklingError: invalid load key, 'n'.") and "download" not in message


@pytest.mark.skipif(not MNIST_10K.is_dir(), reason="shared mnist-10k copy not present")
def test_real_mnist_10k_copy():
    ds = load_dataset("mnist", data_root=str(MNIST_10K), download=False, val_fraction=0.1)
    assert ds.train_x.shape[1:] == (1, 28, 28)
    assert len(ds.train_y) + len(ds.val_y) == 8000 and len(ds.test_y) == 2000


# ---------------------------------------------------------------- imagefolder


def _image_tree(root: Path, size=(8, 6), mode="RGB", classes=("cat", "ant"), per_class=(3, 2)) -> dict:
    rng = np.random.default_rng(0)
    pixels = {}
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    for split, count in zip(("train", "test"), per_class, strict=True):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for index in range(count):
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                path = root / split / cls / f"{index}.png"
                Image.fromarray(array, mode).save(path)
                pixels[path] = array
    return pixels


def test_imagefolder_decode_and_cache_round_trip(tmp_path, monkeypatch):
    pixels = _image_tree(tmp_path / "img")
    cache = tmp_path / "cache"
    ds = load_dataset(f"imagefolder:{tmp_path / 'img'}", cache_dir=str(cache))
    assert ds.in_shape == (3, 6, 8) and ds.num_classes == 2 and not ds.crop_flip
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]  # "ant" sorts before "cat"
    first_ant = pixels[tmp_path / "img" / "train" / "ant" / "0.png"]
    assert np.array_equal(ds.train_x[0].numpy(), first_ant.transpose(2, 0, 1))
    mean, std = channel_stats(ds.train_x)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)
    assert len(list(cache.glob("*.pt"))) == 1

    def no_decode(*args):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(data, "_decode_imagefolder", no_decode)
    again = load_dataset("imagefolder:img", data_root=str(tmp_path), cache_dir=str(cache))
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    assert again.mean == ds.mean


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path):
    _image_tree(tmp_path / "img")
    name, cache = f"imagefolder:{tmp_path / 'img'}", tmp_path / "cache"
    first = load_dataset(name, cache_dir=str(cache))
    (cache_file,) = cache.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="corrupt dataset cache"):
        rebuilt = load_dataset(name, cache_dir=str(cache))
    assert torch.equal(rebuilt.train_x, first.train_x)
    assert set(torch.load(cache_file, weights_only=True)) >= {"train_x", "mean"}


def test_imagefolder_cache_key_follows_files(tmp_path):
    _image_tree(tmp_path / "img")
    name, cache = f"imagefolder:{tmp_path / 'img'}", tmp_path / "cache"
    load_dataset(name, cache_dir=str(cache))
    Image.new("RGB", (8, 6)).save(tmp_path / "img" / "train" / "ant" / "9.png")
    assert len(load_dataset(name, cache_dir=str(cache)).train_y) == 7
    assert len(list(cache.glob("*.pt"))) == 2


def test_imagefolder_grayscale_keeps_one_channel(tmp_path):
    _image_tree(tmp_path / "img", size=(32, 32), mode="L", per_class=(1, 1))
    ds = load_dataset(f"imagefolder:{tmp_path / 'img'}", cache_dir=str(tmp_path / "cache"))
    assert ds.in_shape == (1, 32, 32) and len(ds.mean) == 1 and not ds.crop_flip


def test_imagefolder_rgb_32_enables_crop_flip(tmp_path):
    _image_tree(tmp_path / "img", size=(32, 32), per_class=(1, 1))
    assert load_dataset(f"imagefolder:{tmp_path / 'img'}", cache_dir=str(tmp_path / "cache")).crop_flip


def test_imagefolder_class_mismatch(tmp_path):
    _image_tree(tmp_path / "img")
    (tmp_path / "img" / "test" / "cat").rename(tmp_path / "img" / "test" / "dog")
    with pytest.raises(DataError, match="differ from those in train"):
        load_dataset(f"imagefolder:{tmp_path / 'img'}", cache_dir=str(tmp_path / "cache"))


def test_imagefolder_mixed_sizes_name_the_file(tmp_path):
    _image_tree(tmp_path / "img")
    odd = tmp_path / "img" / "test" / "cat" / "1.png"
    Image.new("RGB", (5, 5)).save(odd)
    with pytest.raises(DataError, match=f"{odd} is 5x5 but .* is 8x6"):
        load_dataset(f"imagefolder:{tmp_path / 'img'}", cache_dir=str(tmp_path / "cache"))


def test_imagefolder_empty_class_and_missing_split(tmp_path):
    name, cache = f"imagefolder:{tmp_path / 'img'}", str(tmp_path / "cache")
    (tmp_path / "img" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder .* has no image files"):
        load_dataset(name, cache_dir=cache)
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "train" / "a" / "0.png")
    with pytest.raises(DataError, match=r"missing folder .*test \(expected test/<class>/<image> files\)"):
        load_dataset(name, cache_dir=cache)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (lambda: b"not a jpeg at all", "not an image format PIL recognizes"),
        # PIL words it "image file is truncated" or "Truncated File Read", by where the data ends
        (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
    ],
    ids=["garbage", "truncated"],
)
def test_imagefolder_corrupt_jpeg_names_the_file(tmp_path, content, cause):
    _image_tree(tmp_path / "img")
    bad = tmp_path / "img" / "train" / "cat" / "7.jpg"
    bad.write_bytes(content())
    name = f"imagefolder:{tmp_path / 'img'}"
    message = _one_line_error(name=name, cache_dir=str(tmp_path / "cache"))
    prefix = f"dataset {name!r}: cannot decode image {bad}: "
    assert message.startswith(prefix) and cause.lower() in message[len(prefix) :].lower()


def test_imagefolder_single_class_is_refused(tmp_path):
    _image_tree(tmp_path / "img", classes=("cat",))
    name = f"imagefolder:{tmp_path / 'img'}"
    expected = f"dataset {name!r}: needs at least 2 classes; found 1: cat (in {tmp_path / 'img' / 'train'})"
    assert _one_line_error(name=name, cache_dir=str(tmp_path / "cache")) == expected
    with pytest.raises(DataError) as info:
        data.check_available(name)
    assert str(info.value) == expected


# ---------------------------------------------------------------- batches


def _toy(n=10, c=3, h=6, w=6):
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n)


def test_batches_shapes_and_normalization():
    x, y = _toy()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = list(batches(x, y, 4, mean=mean, std=std, augment=False, shuffle=False))
    assert [len(b[1]) for b in out] == [4, 4, 2]
    xb, yb = out[0]
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 6, 6) and yb.tolist() == [0, 1, 2, 3]
    expected = (x[:4].double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb.double(), expected, atol=1e-5)
    dropped = list(batches(x, y, 4, mean=mean, std=std, augment=False, shuffle=True, drop_last=True))
    assert [len(b[1]) for b in dropped] == [4, 4]


def test_batches_deterministic_given_generator_state():
    x, y = _toy()
    kwargs = dict(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, shuffle=True)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    first = list(batches(x, y, 3, generator=gen, **kwargs))
    gen.set_state(state)
    second = list(batches(x, y, 3, generator=gen, **kwargs))
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == list(range(10))
    assert torch.cat([b[1] for b in first]).tolist() != list(range(10))


def test_augmentation_changes_images_but_keeps_shape():
    x, _ = _toy(n=32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)


def test_crop_flip_of_known_pattern():
    h = w = 5
    # Distinct non-zero pixels, so every output identifies exactly one crop offset and flip.
    x = (torch.arange(h * w, dtype=torch.uint8) + 1).view(1, 1, h, w).repeat(64, 2, 1, 1)
    x[:, 1] += 100
    padded = torch.nn.functional.pad(x[0], (data.PAD,) * 4)
    candidates = {}
    for dy in range(2 * data.PAD + 1):
        for dx in range(2 * data.PAD + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(-1)
    seen = set()
    for image in random_crop_flip(x, torch.Generator().manual_seed(1)):
        matches = [key for key, crop in candidates.items() if torch.equal(image, crop)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20


def test_normalize_rejects_bad_input():
    x, _ = _toy()
    with pytest.raises(DataError, match="one value per channel"):
        normalize(x, (0.5,), (0.2,))
    with pytest.raises(DataError, match="uint8"):
        normalize(x.float(), (0.5,) * 3, (0.2,) * 3)
