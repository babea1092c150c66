"""The authors' released checkpoints: their layout loads exactly, a bad file is one line, the CLI records the block.

The reference forwards below are written from the authors' architecture (XitongSystem/LoRITa, Compress_Code/arch/
resnet.py ResNet_small with option-A BasicBlocks, vgg.py VGG('VGG16')) over the raw state-dict tensors with
torch.nn.functional alone, so that they share nothing with the suite's models or its key mapping.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lorita
from benchmarks.authors.block import file_sha256
from benchmarks.authors.layout import LayoutError, load_authors, read_state
from benchmarks.cli import main
from benchmarks.config import make_config
from benchmarks.models import create_model
from benchmarks.run.pipeline import execute
from benchmarks.tracking import schema
from reports.build import build_report

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
EPS = 1e-5  # BatchNorm2d's default, which both codes use


# ---------------------------------------------------------------- synthetic checkpoints in the authors' layout


def _conv(gen: torch.Generator, out: int, fan_in: int, k: int) -> torch.Tensor:
    # He-scaled, so that activations stay of order one through 13 or 19 layers.
    return torch.randn(out, fan_in, k, k, generator=gen, dtype=torch.float64) * (2 / (fan_in * k * k)) ** 0.5


def _composed_conv(state: dict, gen: torch.Generator, name: str, sep: str, c_in: int, c_out: int, n: int) -> None:
    state[f"{name}{sep}compress_0.weight"] = _conv(gen, c_out, c_in, 3)
    for k in range(1, n):
        state[f"{name}{sep}compress_{k}.weight"] = _conv(gen, c_out, c_out, 1)


def _bn(state: dict, gen: torch.Generator, name: str, c: int) -> None:
    state[f"{name}.weight"] = 1 + 0.2 * torch.randn(c, generator=gen, dtype=torch.float64)
    state[f"{name}.bias"] = 0.2 * torch.randn(c, generator=gen, dtype=torch.float64)
    state[f"{name}.running_mean"] = 0.2 * torch.randn(c, generator=gen, dtype=torch.float64)
    state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=gen, dtype=torch.float64)
    state[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def _linear(gen: torch.Generator, out: int, fan_in: int) -> torch.Tensor:
    return torch.randn(out, fan_in, generator=gen, dtype=torch.float64) / fan_in ** 0.5


def _classifier(state: dict, gen: torch.Generator, name: str, width: int, classes: int, n: int) -> None:
    for k in range(n - 1):  # square, no bias; the last maps to the classes and has the bias
        state[f"{name}.compress_{k}.weight"] = _linear(gen, width, width)
    state[f"{name}.compress_{n - 1}.weight"] = _linear(gen, classes, width)
    state[f"{name}.compress_{n - 1}.bias"] = torch.randn(classes, generator=gen, dtype=torch.float64)


def resnet20_state(n: int, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """ResNet_small(BasicBlock, [3, 3, 3], factor=n): 16/32/64 planes, FeedForward(64, classes) as linear.net1."""
    gen, state = torch.Generator().manual_seed(seed), {}
    _composed_conv(state, gen, "conv1", ".", 3, 16, n)
    _bn(state, gen, "bn1", 16)
    c_in = 16
    for layer, planes in enumerate((16, 32, 64), 1):
        for block in range(3):
            prefix = f"layer{layer}.{block}"
            _composed_conv(state, gen, f"{prefix}.conv1", ".", c_in, planes, n)
            _composed_conv(state, gen, f"{prefix}.conv2", ".", planes, planes, n)
            _bn(state, gen, f"{prefix}.bn1", planes)
            _bn(state, gen, f"{prefix}.bn2", planes)
            c_in = planes
    _classifier(state, gen, "linear.net1", 64, classes, n)
    return state


def vgg16_state(n: int, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """VGG('VGG16', factor=n): features named by cfg position (conv_<i>:compress_<k>, bn_<i>), classifier.compress_*."""
    gen, state, c_in = torch.Generator().manual_seed(seed), {}, 3
    for i, entry in enumerate(VGG16):
        if entry != "M":
            _composed_conv(state, gen, f"features.conv_{i}", ":", c_in, entry, n)
            _bn(state, gen, f"features.bn_{i}", entry)
            c_in = entry
    _classifier(state, gen, "classifier", 512, classes, n)
    return state


# ---------------------------------------------------------------- the authors' forward, from their description


def _apply_conv(s: dict, name: str, sep: str, x: torch.Tensor, n: int, stride: int = 1) -> torch.Tensor:
    x = F.conv2d(x, s[f"{name}{sep}compress_0.weight"], stride=stride, padding=1)
    for k in range(1, n):  # compress_1 .. compress_{n-1}: 1x1, applied in order after the 3x3
        x = F.conv2d(x, s[f"{name}{sep}compress_{k}.weight"])
    return x


def _apply_bn(s: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                        s[f"{name}.bias"], training=False, eps=EPS)


def _apply_classifier(s: dict, name: str, x: torch.Tensor, n: int) -> torch.Tensor:
    for k in range(n - 1):
        x = F.linear(x, s[f"{name}.compress_{k}.weight"])
    return F.linear(x, s[f"{name}.compress_{n - 1}.weight"], s[f"{name}.compress_{n - 1}.bias"])


def resnet20_forward(s: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    out = F.relu(_apply_bn(s, "bn1", _apply_conv(s, "conv1", ".", x, n)))
    c_in = 16
    for layer, planes in enumerate((16, 32, 64), 1):
        for block in range(3):
            p, stride = f"layer{layer}.{block}", 2 if block == 0 and layer > 1 else 1
            y = F.relu(_apply_bn(s, f"{p}.bn1", _apply_conv(s, f"{p}.conv1", ".", out, n, stride)))
            y = _apply_bn(s, f"{p}.bn2", _apply_conv(s, f"{p}.conv2", ".", y, n))
            # Option A: every other pixel, planes // 4 zero channels on each side.
            short = out if stride == 1 and c_in == planes else F.pad(out[:, :, ::2, ::2],
                                                                       (0, 0, 0, 0, planes // 4, planes // 4))
            out, c_in = F.relu(y + short), planes
    out = F.avg_pool2d(out, out.size(3)).flatten(1)
    return _apply_classifier(s, "linear.net1", out, n)


def vgg16_forward(s: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    for i, entry in enumerate(VGG16):
        if entry == "M":
            x = F.max_pool2d(x, 2, 2)
        else:
            x = F.relu(_apply_bn(s, f"features.bn_{i}", _apply_conv(s, f"features.conv_{i}", ":", x, n)))
    x = F.avg_pool2d(x, 1, 1).flatten(1)
    return _apply_classifier(s, "classifier", x, n)


STATES = {"resnet20": resnet20_state, "vgg16": vgg16_state}
FORWARDS = {"resnet20": resnet20_forward, "vgg16": vgg16_forward}


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _ours(name: str, n: int, classes: int = 10) -> torch.nn.Module:
    return lorita.overparameterize(create_model(name, classes, (3, 32, 32)), n)


# ---------------------------------------------------------------- exact import


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
@pytest.mark.parametrize("n", [2, 3])
def test_the_imported_model_computes_the_authors_function(tmp_path, name, n):
    state = STATES[name](n)
    path = _save(tmp_path / "ckpt.pt", {"model_state_dict": state})
    model = _ours(name, n).double()
    load_authors(read_state(path), model, name, n, path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model.eval()(x)
        expected = FORWARDS[name](state, x, n)
    assert expected.abs().max() > 1e-3  # a live network, not one whose ReLUs zeroed everything
    assert (torch.linalg.norm(got - expected) / torch.linalg.norm(expected)).item() < 1e-9
    # The running statistics came along, not only the parameters.
    assert torch.equal(model.state_dict()["bn1.num_batches_tracked" if name == "resnet20" else
                                          "features.1.num_batches_tracked"], torch.tensor(1000))


# ---------------------------------------------------------------- one-line errors


def _error(path: Path, name: str = "resnet20", n: int = 2, classes: int = 10) -> str:
    with pytest.raises(LayoutError) as info:
        load_authors(read_state(path), _ours(name, n, classes), name, n, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_missing_key_is_named(tmp_path):
    state = resnet20_state(2)
    del state["layer2.1.conv2.compress_1.weight"]
    message = _error(_save(tmp_path / "c.pt", {"model_state_dict": state}))
    assert message.endswith("not the authors' resnet20 at factors 2: missing key 'layer2.1.conv2.compress_1.weight' "
                            "(expected shape (32, 32, 1, 1))")


def test_a_wrong_shape_says_expected_and_got(tmp_path):
    path = _save(tmp_path / "c.pt", {"model_state_dict": resnet20_state(2, classes=100)})
    assert _error(path).endswith("'linear.net1.compress_1.weight' has shape (100, 64), expected (10, 64)")


def test_other_factors_are_an_unexpected_key(tmp_path):
    path = _save(tmp_path / "c.pt", {"model_state_dict": resnet20_state(3)})
    assert _error(path).endswith("unexpected key 'conv1.compress_2.weight'")
    path = _save(tmp_path / "v.pt", {"model_state_dict": vgg16_state(2)})
    assert _error(path).endswith("unexpected key 'features.conv_0:compress_0.weight'")


@pytest.mark.parametrize(("saved", "expected"), [
    ([1, 2], "expected a dict holding 'model_state_dict', got a list"),
    ({"state_dict": {}, "epoch": 3}, "no 'model_state_dict' among its keys ('state_dict', 'epoch')"),
    ({"model_state_dict": [torch.zeros(1)]}, "model_state_dict is a list, not a state dict"),
])
def test_a_file_not_in_the_layout_is_one_line(tmp_path, saved, expected):
    path = _save(tmp_path / "c.pt", saved)
    with pytest.raises(LayoutError, match=re.escape(expected)):
        read_state(path)


class Payload:
    """Anything torch.load would have to import and construct: what weights_only refuses."""


def test_a_file_that_would_run_code_is_refused(tmp_path):
    ran = tmp_path / "ran"
    path = _save(tmp_path / "c.pt", {"model_state_dict": resnet20_state(2), "extra": Payload()})
    # A raw pickle whose loading would call a function (here: create a file).
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Touch(str(ran)), protocol=2))
    for bad, name in ((path, "test_authors_import.Payload"), (evil, "io.open")):
        with pytest.raises(LayoutError, match=re.escape(f"refused: loading it would run code ({name}")) as info:
            read_state(bad)
        assert "\n" not in str(info.value)
    assert not ran.exists()
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(LayoutError, match=r"not a checkpoint torch.load reads with weights_only=True \(Unpickl"):
        read_state(text)


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------- the CLI end to end


def _image_folder(root: Path, classes=("cat", "dog"), per_class=(2, 2)) -> Path:
    """A CIFAR-shaped image folder: 32x32 RGB PNGs, `per_class` train and test images per class."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_cli_records_the_block_and_the_report_keeps_it_apart(store, tmp_path, capsys):
    data = _image_folder(tmp_path / "img")
    state = {k: v.float() if v.is_floating_point() else v for k, v in resnet20_state(2, classes=2).items()}
    ckpt = _save(tmp_path / "factor2.pt", {"model_state_dict": state})
    cache = str(store / "authors-cache")
    flags = ["--model", "resnet20", "--factors", "2", "--dataset", f"imagefolder:{data}", "--experiment", "authors",
             "--cache-dir", cache, "--device", "cpu", "--no-latency"]
    code = main(["import-authors", str(ckpt), *flags, "--target-flops-drop", "0.5", "--rank-policies", "threshold",
                 "--finetune-epochs", "0", "--set", "budget.batch_size=2", "--set", "budget.epochs=1"])
    assert code == 0
    assert "acc_finetuned" in capsys.readouterr().out
    runs = mlflow.search_runs(experiment_names=["authors"])
    assert len(runs) == 1
    row = runs.iloc[0]
    digest = file_sha256(ckpt)
    assert row["status"] == "FINISHED" and row[f"tags.{schema.TAG_TRAINED_FROM}"] == digest
    assert row["params.trained_from"] == digest and row["params.method_options.rank_policy"] == "threshold"
    assert row[f"metrics.{schema.TRAIN_TIME_S}"] == 0
    assert abs(row[f"metrics.{schema.FLOPS_DROP}"] - 0.5) <= 0.01
    # No fine-tuning: the compressed model is the final one.
    assert row[f"metrics.{schema.ACC_FINETUNED}"] == row[f"metrics.{schema.ACC_COMPRESSED}"]

    # Another target later reuses the imported entry rather than measuring the checkpoint again.
    (meta,) = Path(cache, "trained").glob("*/meta.pt")
    written = meta.stat().st_mtime_ns
    assert main(["import-authors", str(ckpt), *flags, "--target-flops-drop", "0.3", "--rank-policies", "threshold",
                 "--finetune-epochs", "0", "--set", "budget.batch_size=2", "--set", "budget.epochs=1"]) == 0
    assert meta.stat().st_mtime_ns == written
    assert len(mlflow.search_runs(experiment_names=["authors"])) == 2

    # A trained run of the same settings is another run of its own comparison, never mixed with the imported one.
    trained = make_config({"experiment": "authors", "model": "resnet20", "dataset": f"imagefolder:{data}",
                           "factors": 2, "method": "lorita", "target_metric": "flops_drop", "target": 0.5,
                           "method_options": {"rank_policy": "threshold"}, "cache_dir": cache, "device": "cpu",
                           "budget": {"epochs": 1, "finetune_epochs": 0, "batch_size": 2}})
    execute(trained, latency=False)
    report = build_report(tmp_path / "report", experiment="authors")
    text = report.markdown.read_text()
    authors = text.index("## Authors' released checkpoints")
    assert f"checkpoint {digest[:12]}" in text[authors:]
    # The trained run's comparison comes before the block and holds its one row: the imported runs are not in it.
    assert text[:authors].count("| LoRITa (N=2, rank_policy=threshold) |") == 1
    assert text[authors:].count("| LoRITa (N=2, rank_policy=threshold) |") == 2

    # A config naming a checkpoint that was never imported fails in one line, telling what to run.
    code = main(["run", "--model", "resnet20", "--factors", "2", "--dataset", f"imagefolder:{data}",
                 "--target-flops-drop", "0.5", "--experiment", "authors", "--cache-dir", cache, "--device", "cpu",
                 "--no-latency", "--set", f"trained_from={'ab' * 32}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "run `lorita-bench import-authors CKPT`" in err


def test_cli_refuses_a_bad_file_in_one_line(store, tmp_path, capsys):
    ckpt = _save(tmp_path / "bad.pt", {"weights": {}})
    code = main(["import-authors", str(ckpt), "--model", "resnet20", "--factors", "2", "--target-flops-drop", "0.5",
                 "--cache-dir", str(store / "bad-cache"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == f"lorita-bench: error: {ckpt}: not an authors' checkpoint: no 'model_state_dict' among its keys " \
                  "('weights')"
