"""baselines.tp_private: the torch-pruning private API it calls exists in the installed version, still behaves as
the adapter documents, and no other baselines module calls it directly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

import baselines
from baselines import tp_private

PRUNER_METHODS = ("_is_atten_group", "_downstream_node_as_root_if_attention", "_get_channel_groups")
GRAPH_ATTRIBUTES = ("_module2name",)
PACKAGE = Path(baselines.__file__).parent
ADAPTER = Path(tp_private.__file__)


def _missing(owner: str, attribute: str) -> str:
    return f"torch_pruning {tp.__version__} no longer has {owner}.{attribute}: update baselines/tp_private.py"


class _Attention(nn.Module):
    """timm's attention layout (qkv split by unbind, then proj), the case the attention helpers exist for."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Attention()
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x).mean(1))


def _pruner(cls: type[tp.pruner.BasePruner]) -> tuple[tp.pruner.BasePruner, _Net]:
    model = _Net()
    pruner = cls(model, torch.randn(1, 4, 8), importance=tp.importance.GroupMagnitudeImportance(p=2),
                 ignored_layers=[model.head, model.attn.proj], num_heads={model.attn.qkv: model.attn.num_heads})
    return pruner, model


PRUNERS = sorted({spec.pruner for spec in baselines.METHODS.values()}, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", PRUNERS, ids=lambda cls: cls.__name__)
def test_the_private_attributes_the_adapter_calls_exist(cls):
    for attribute in PRUNER_METHODS:
        assert callable(getattr(cls, attribute, None)), _missing(cls.__name__, attribute)
    pruner, _ = _pruner(cls)
    for attribute in GRAPH_ATTRIBUTES:
        assert isinstance(getattr(pruner.DG, attribute, None), dict), _missing(type(pruner.DG).__name__, attribute)


@pytest.mark.parametrize("cls", PRUNERS, ids=lambda cls: cls.__name__)
def test_the_adapter_behaves_as_documented(cls):
    pruner, model = _pruner(cls)
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                           root_module_types=pruner.root_module_types))
    assert len(groups) == 1
    group = groups[0]
    assert tp_private.attention_qkv(pruner, group) == (True, [model.attn.qkv])
    assert tp_private.module_name(pruner.DG, group[0].dep.target.module) == "attn.qkv"
    assert tp_private.module_name(pruner.DG, nn.Linear(1, 1)) is None
    rerooted = tp_private.reroot_attention_group(pruner, group)
    assert rerooted is not None and rerooted[0].dep.target.module is model.attn.proj
    assert tp_private.channel_groups(pruner, rerooted) == model.attn.num_heads


def _private_attributes(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")}


def test_only_the_adapter_calls_torch_pruning_private_api():
    checked = set(PRUNER_METHODS) | set(GRAPH_ATTRIBUTES)
    unchecked = _private_attributes(ADAPTER) - checked
    assert not unchecked, f"baselines/tp_private.py calls {sorted(unchecked)}: add them to tests/test_tp_adapter.py"
    for path in sorted(PACKAGE.glob("*.py")):
        if path != ADAPTER:
            direct = _private_attributes(path) & checked
            assert not direct, f"baselines/{path.name} calls {sorted(direct)}: go through baselines/tp_private.py"
