"""The authors' checkpoint layout (XitongSystem/LoRITa, Compress_Code/arch/) read exactly into our composed models.

Their ResNet-20 and VGG16 compute the same function as `lorita.overparameterize(create_model(name, ...), N)` on
32x32 inputs: the same convs (no bias), BatchNorms, option-A shortcut (subsample by 2, zero-pad planes//4 channels
each side), pooling and classifier, each conv composed as its k x k conv then N-1 square 1x1 convs and the
classifier as N-1 square maps then in->out with the bias last. Only the names differ: theirs are the nn.Sequential
children `compress_<k>` where ours are `factors.<k>`; the ResNet-20 classifier sits in `linear.net1`, and VGG16
names its features by position in the cfg list (`conv_<i>:compress_<k>`, `bn_<i>`) where ours are numbered modules.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from benchmarks.models import VGG_CFGS

# Where train_CNN.py puts the weights: torch.save({"model_state_dict": model.state_dict()}, ...).
STATE_KEY = "model_state_dict"
# How torch's weights-only unpickler names what a file would import (and run) on loading.
_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)")
_FACTOR = re.compile(r"\.factors\.(\d+)\.")


class LayoutError(ValueError):
    """A file that is not an authors' checkpoint of the asked network (one line naming the first bad key)."""


def _resnet20(key: str) -> str:
    # Their classifier is FeedForward(64, classes).net1; its factors, like every conv's, are compress_<k>.
    return _FACTOR.sub(r".compress_\1.", re.sub(r"^linear\.", "linear.net1.", key))


def _vgg_names(cfg: list[int | str]) -> dict[int, str]:
    # Ours numbers every module (conv, bn, relu per width, one max-pool per "M"); theirs names it by its cfg entry.
    names, index = {}, 0
    for position, entry in enumerate(cfg):
        if entry != "M":
            names[index], names[index + 1] = f"conv_{position}", f"bn_{position}"
        index += 1 if entry == "M" else 3
    return names


_VGG16 = _vgg_names(VGG_CFGS["vgg16"])


def _vgg16(key: str) -> str:
    if not key.startswith("features."):
        return _FACTOR.sub(r".compress_\1.", key)
    _, index, rest = key.split(".", 2)
    name = _VGG16[int(index)]
    factor = re.fullmatch(r"factors\.(\d+)\.(\w+)", rest)
    # A conv's factors are siblings in their Sequential, named with a colon: features.conv_0:compress_1.weight.
    return f"features.{name}:compress_{factor[1]}.{factor[2]}" if factor else f"features.{name}.{rest}"


# Our model name -> the authors' name of each of our composed model's state-dict keys.
AUTHORS_KEYS = {"resnet20": _resnet20, "vgg16": _vgg16}


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The `model_state_dict` of the checkpoint at `path`, read with weights_only=True; a LayoutError otherwise."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - every other unpickling failure means the same: not a usable file
        code = _REFUSED.search(str(err))
        if code:
            raise LayoutError(f"{path}: refused: loading it would run code ({code[1]}); torch.load with "
                              "weights_only=True reads tensors and plain containers only") from None
        raise LayoutError(f"{path}: not a checkpoint torch.load reads with weights_only=True "
                          f"({type(err).__name__})") from None
    if not isinstance(saved, dict):
        raise LayoutError(f"{path}: not an authors' checkpoint: expected a dict holding {STATE_KEY!r}, got a "
                          f"{type(saved).__name__}")
    if STATE_KEY not in saved:
        keys = ", ".join(repr(key) for key in list(saved)[:5]) or "none"
        raise LayoutError(f"{path}: not an authors' checkpoint: no {STATE_KEY!r} among its keys ({keys})")
    state = saved[STATE_KEY]
    if not isinstance(state, dict):
        raise LayoutError(f"{path}: {STATE_KEY} is a {type(state).__name__}, not a state dict")
    return state


def load_authors(state: dict[str, torch.Tensor], model: nn.Module, name: str, factors: int, path: Path) -> None:
    """Load an authors' state dict (read_state of `path`) into `model`, our `name` composed at `factors`, every key
    and shape checked first: a LayoutError names the first key unexpected, missing, or of another shape."""
    where = f"{path}: not the authors' {name} at factors {factors}"
    expected = {AUTHORS_KEYS[name](key): (key, tensor) for key, tensor in model.state_dict().items()}
    # Unexpected keys first: another N, network or wrapper (DataParallel's module.) shows in the first one.
    extra = next((key for key in state if key not in expected), None)
    if extra is not None:
        raise LayoutError(f"{where}: unexpected key {extra!r}")
    ours = {}
    for theirs, (key, tensor) in expected.items():
        if theirs not in state:
            raise LayoutError(f"{where}: missing key {theirs!r} (expected shape {tuple(tensor.shape)})")
        value = state[theirs]
        if not isinstance(value, torch.Tensor):
            raise LayoutError(f"{where}: {theirs!r} is a {type(value).__name__}, not a tensor")
        if value.shape != tensor.shape:
            raise LayoutError(f"{where}: {theirs!r} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}")
        ours[key] = value
    model.load_state_dict(ours)
