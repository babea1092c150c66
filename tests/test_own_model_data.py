"""Bringing one's own model and data: image folders of mixed sizes and pixel formats, torchvision weights and
checkpoints, model factories from the current folder, and their one-line errors."""

import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from benchmarks.config import identity, make_config
from benchmarks.data import DataError, check_available, fingerprint, load_dataset
from benchmarks.methods import resolve
from benchmarks.models import ModelError, architecture, create_model
from benchmarks.run.pipeline import trained_key
from benchmarks.sweeps.grid import expand, parse_sweep


def _folder(root, images):
    """An image folder: `images` maps (split, class, name) to a PIL image."""
    for (split, cls, name), image in images.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    return f"imagefolder:{root}"


def _rgb(h, w, value):
    return Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8))


def test_mixed_sizes_are_resized_to_cover_then_center_cropped(tmp_path):
    # A 16x32 image (h x w) whose columns count up: covering 8x8 halves it to 8x16, and the crop keeps columns 4..11.
    ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (16, 1))
    ramp = np.stack([ramp] * 3, axis=-1)
    name = _folder(tmp_path, {
        ("train", "a", "ramp.png"): Image.fromarray(ramp), ("train", "b", "tall.png"): _rgb(40, 10, 200),
        ("test", "a", "small.png"): _rgb(5, 7, 30), ("test", "b", "big.png"): _rgb(64, 48, 90)})
    with pytest.raises(DataError, match=r"all images must share one size \(or set dataset_kwargs.size"):
        load_dataset(name, cache_dir=str(tmp_path / "cache"))
    data = load_dataset(name, cache_dir=str(tmp_path / "cache"), options={"size": 8})
    assert data.in_shape == (3, 8, 8) and data.train_x.shape == (2, 3, 8, 8) and data.test_x.shape == (2, 3, 8, 8)
    expected = np.asarray(Image.fromarray(ramp).resize((16, 8), Image.Resampling.BILINEAR))[:, 4:12]
    assert np.array_equal(data.train_x[0].permute(1, 2, 0).numpy(), expected)
    # The crop is central: the covered image's middle columns, so the ramp still rises left to right.
    assert (np.diff(expected[0, :, 0].astype(int)) > 0).all()
    # Flat images stay flat, upscaled (5x7) or not.
    assert set(data.test_x[0].unique().tolist()) == {30} and set(data.train_x[1].unique().tolist()) == {200}
    wide = load_dataset(name, cache_dir=str(tmp_path / "cache"), options={"size": [4, 6]})
    assert wide.in_shape == (3, 4, 6)
    # The size is part of what was decoded: another size, another fingerprint (and cache file).
    assert len({data.fingerprint, wide.fingerprint}) == 2
    assert fingerprint(name, cache_dir=str(tmp_path / "cache"), options={"size": 8}) == data.fingerprint


def test_palette_rgba_16_bit_and_gray_alpha_images_decode_to_8_bit(tmp_path):
    colors = np.array([[[10, 200, 30], [250, 0, 120]]] * 2, dtype=np.uint8)  # 2x2, two colours: an exact palette
    wide = np.array([[0, 257 * 17], [257 * 128, 65535]], dtype=np.uint16)  # 16-bit widenings of 0, 17, 128, 255
    rgba = np.dstack([colors, np.array([[0, 255], [128, 7]], dtype=np.uint8)])
    name = _folder(tmp_path, {
        ("train", "a", "palette.png"): Image.fromarray(colors).quantize(2),
        ("train", "a", "rgba.png"): Image.fromarray(rgba),
        ("train", "b", "wide.png"): Image.fromarray(wide),
        ("train", "b", "gray_alpha.png"): Image.fromarray(np.dstack([np.full((2, 2), 99, np.uint8)] * 2), "LA"),
        ("test", "a", "t.png"): Image.fromarray(colors), ("test", "b", "u.png"): Image.fromarray(wide)})
    modes = {p.name: Image.open(p).mode for p in tmp_path.rglob("*.png")}
    assert modes["palette.png"] == "P" and modes["wide.png"] == "I;16" and modes["gray_alpha.png"] == "LA"
    data = load_dataset(name, cache_dir=str(tmp_path / "cache"))
    images = data.train_x.permute(0, 2, 3, 1).numpy()  # in file order: class a (palette, rgba), class b
    assert np.array_equal(images[0], colors)  # palette -> its colours
    assert np.array_equal(images[1], colors)  # alpha dropped, colours kept
    # 16-bit pixels scaled to 8 bits (PIL's own conversion would clip 4369 and up to 255); gray becomes RGB here.
    assert np.array_equal(images[3][..., 0], [[0, 17], [128, 255]]) and (images[3] == images[3][..., :1]).all()
    assert (images[2] == 99).all()


def test_dataset_options_are_checked_in_one_line(tmp_path):
    with pytest.raises(DataError, match=r"dataset_kwargs.size: dataset 'digits' takes none"):
        load_dataset("digits", options={"size": 8})
    name = _folder(tmp_path, {(s, c, "x.png"): _rgb(4, 4, 1) for s in ("train", "test") for c in "ab"})
    for bad in (0, [3], "32", [4, True], 2.5):
        with pytest.raises(DataError, match=r"dataset_kwargs.size must be an integer >= 1 or \[height, width\]"):
            check_available(name, options={"size": bad})
    with pytest.raises(DataError, match=r"dataset_kwargs.crop: dataset .* takes only size"):
        check_available(name, options={"crop": 1})
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        load_dataset("cifar01")
    float_image = tmp_path / "float"
    _folder(float_image, {(s, c, "x.tiff"): Image.fromarray(np.zeros((2, 2), np.float32))
                          for s in ("train", "test") for c in "ab"})
    with pytest.raises(DataError, match="32-bit float pixels"):
        load_dataset(f"imagefolder:{float_image}", cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private torch hub cache, and a network that is never reached (every download fails as offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise OSError(f"offline: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_weights_come_from_the_hub_cache_with_the_head_refitted(torch_home):
    cached = torch_home / "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(ModelError) as err:
        create_model("tv:squeezenet1_1", 3, (3, 32, 32), weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and str(cached) in message
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in message
    torch.manual_seed(1)
    pretrained = torchvision.models.squeezenet1_1(num_classes=1000).state_dict()  # a stand-in for ImageNet's
    torch_home.mkdir(parents=True, exist_ok=True)  # the failed download made it
    torch.save(pretrained, cached)
    model = create_model("tv:squeezenet1_1", 3, (3, 32, 32), weights="IMAGENET1K_V1")
    state = model.state_dict()
    assert torch.equal(state["features.0.weight"], pretrained["features.0.weight"])
    assert state["classifier.1.weight"].shape == (3, 512, 1, 1)  # a fresh head for this data's 3 classes
    full = create_model("tv:squeezenet1_1", 1000, (3, 32, 32), weights="SqueezeNet1_1_Weights.DEFAULT")
    assert torch.equal(full.state_dict()["classifier.1.weight"], pretrained["classifier.1.weight"])
    with pytest.raises(ModelError, match=r"weights must be one of IMAGENET1K_V1, DEFAULT; got 'IMAGENET1K_V2'"):
        create_model("tv:squeezenet1_1", 3, (3, 32, 32), weights="IMAGENET1K_V2")


def test_torchvision_checkpoint_is_key_and_shape_checked(tmp_path):
    torch.manual_seed(2)
    source = torchvision.models.squeezenet1_1(num_classes=4)
    path = tmp_path / "mine.pt"
    torch.save(source.state_dict(), path)
    model = create_model("tv:squeezenet1_1", 4, (3, 32, 32), checkpoint=str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(),
                                                 strict=True))
    with pytest.raises(ModelError, match=r"classifier.1.weight has shape \(4, 512, 1, 1\) but the model's is \(5,"):
        create_model("tv:squeezenet1_1", 5, (3, 32, 32), checkpoint=str(path))
    partial = dict(source.state_dict())
    partial.pop("features.0.bias")
    torch.save(partial, path)
    with pytest.raises(ModelError, match=r"it lacks features.0.bias \(1 missing, 0 unexpected"):
        create_model("tv:squeezenet1_1", 4, (3, 32, 32), checkpoint=str(path))
    # The trained-model cache knows the file's content, not only its path: a changed file is trained anew.
    cfg = make_config({"model": "tv:squeezenet1_1", "model_kwargs": {"checkpoint": str(path)}, "method": "dense"})
    before = trained_key(cfg, "data")
    torch.save(source.state_dict(), path)
    assert trained_key(cfg, "data") != before
    assert trained_key(make_config({"model": "tv:squeezenet1_1", "method": "dense"}), "data") == trained_key(
        make_config({"model": "tv:squeezenet1_1", "method": "dense"}), "data")
    torch.save({"weights": source.state_dict(), "note": object()}, path)  # a pickled object: weights_only refuses it
    with pytest.raises(ModelError, match="cannot load state dict"):
        create_model("tv:squeezenet1_1", 4, (3, 32, 32), checkpoint=str(path))
    # Rebuilding a stored run's network needs no starting weights: a file gone since then is not read.
    gone = {"checkpoint": str(tmp_path / "gone.pt"), "dropout": 0.2}
    assert architecture("tv:squeezenet1_1", gone) == {"dropout": 0.2}
    assert architecture("mine:factory", gone) == gone
    with pytest.raises(ModelError, match="cannot load state dict"):
        create_model("tv:squeezenet1_1", 4, (3, 32, 32), **gone)
    with pytest.raises(ModelError, match=r"tv:squeezenet1_1: model_kwargs \['dropuot'\] not accepted: .*dropuot"):
        create_model("tv:squeezenet1_1", 4, (3, 32, 32), dropuot=0.1)


def test_a_factory_in_the_current_folder_is_found_and_its_signature_checked(tmp_path, monkeypatch):
    (tmp_path / "own_models_22.py").write_text(
        "from torch import nn\n\n"
        "def tiny(num_classes, in_shape, *, width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], width), "
        "nn.ReLU(), nn.Linear(width, num_classes))\n\n"
        "def loose(**kwargs):\n    return nn.Linear(kwargs['in_shape'][2], kwargs['num_classes'])\n\n"
        "def old(classes, shape):\n    return nn.Linear(1, 1)\n\n"
        "def needy(num_classes, in_shape, depth):\n    return nn.Linear(1, 1)\n\n"
        "def not_a_model(num_classes, in_shape):\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = create_model("own_models_22:tiny", 3, (1, 4, 4), width=5)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3) and model[1].out_features == 5
    assert create_model("own_models_22:loose", 3, (1, 4, 4), extra=1).out_features == 3
    with pytest.raises(ModelError, match=r"must take keyword arguments num_classes, in_shape .* it lacks num_classes, "
                                         r"in_shape$"):
        create_model("own_models_22:old", 3, (1, 4, 4))
    with pytest.raises(ModelError, match=r"it lacks depht$"):
        create_model("own_models_22:tiny", 3, (1, 4, 4), depht=2)
    with pytest.raises(ModelError, match=r"requires depth, which the suite does not pass"):
        create_model("own_models_22:needy", 3, (1, 4, 4))
    with pytest.raises(ModelError, match=r"returned int, not a torch.nn.Module"):
        create_model("own_models_22:not_a_model", 3, (1, 4, 4))
    with pytest.raises(ModelError, match=r"cannot load model factory 'no_such_module_22:f': ModuleNotFoundError"):
        create_model("no_such_module_22:f", 3, (1, 4, 4))
    with pytest.raises(ModelError, match=r"unknown model 'fnc' \(did you mean 'fcn'\?\)"):
        create_model("fnc", 3, (1, 4, 4))



def test_a_sweep_passes_dataset_options_to_every_run_of_that_dataset():
    sweep = parse_sweep({"name": "own", "models": ["fcn"], "methods": ["dense"],
                         "datasets": ["digits", {"name": "imagefolder:/data/pets", "dataset_kwargs": {"size": 32}}]})
    runs = expand(sweep)
    assert sorted((cfg.dataset, cfg.dataset_kwargs.get("size")) for cfg in runs) == [
        ("digits", None), ("imagefolder:/data/pets", 32)]
    # Set only where given: the digits run keeps the config hash it had before the option existed.
    digits = next(cfg for cfg in runs if cfg.dataset == "digits")
    plain = resolve(make_config({"experiment": "own", "model": "fcn", "method": "dense", "dataset": "digits"}))
    assert "dataset_kwargs" not in identity(digits) and digits.config_hash() == plain.config_hash()
    with pytest.raises(ValueError, match=r"datasets\[0\].dataset_kwargs must be a mapping"):
        parse_sweep({"name": "own", "models": ["fcn"], "methods": ["dense"],
                     "datasets": [{"name": "digits", "dataset_kwargs": 32}]})
