"""The package layout holds: one method registry, imports one way without circles, identities that never move."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from benchmarks.config import ConfigError, _spec, identity, make_config, stable_hash
from benchmarks.data import load_dataset
from benchmarks.methods import METHODS, get_method, resolve
from benchmarks.run.pipeline import trained_key, training_group

ROOT = Path(__file__).resolve().parent.parent
# Imports point one way: a package may import those to its right only.
LAYERS = ("reports", "benchmarks", "baselines", "lorita")


def _modules() -> dict[str, Path]:
    """Every module of the four packages by dotted name (a package by its __init__)."""
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the module, inside functions too."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            out.append((base, [alias.name for alias in node.names], node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from pkg import sub` counts as importing pkg.sub)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            if module.split(".")[0] not in LAYERS:
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            targets = subs if subs and len(subs) == len(names) else [module, *subs]
            graph[name].update(t for t in targets if t in MODULES and t != name)
    return graph


def test_the_import_graph_has_no_circle():
    graph = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_point_one_way_and_take_no_private_name():
    for name, path in MODULES.items():
        layer = LAYERS.index(name.split(".")[0])
        for module, names, line in _imports(name, path):
            top = module.split(".")[0]
            if top not in LAYERS:
                continue
            assert LAYERS.index(top) >= layer, f"{path.relative_to(ROOT)}:{line} imports {module} (a higher layer)"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.relative_to(ROOT)}:{line} imports private {private} from {module}"


def _forbidden() -> set[str]:
    # Method names, report labels, and the label prefix that older code built and parsed back.
    return {*METHODS, *(m.label for m in METHODS.values()), "lorita N="}


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for element in node.elts for v in _literals(element)]
    return []


def test_no_method_name_is_compared_with_a_literal_outside_the_registry():
    forbidden = _forbidden()
    found = []
    for name, path in MODULES.items():
        if name.startswith("benchmarks.methods"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            literals: list[str] = []
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
                                                     for op in node.ops):
                for side in [node.left, *node.comparators]:
                    literals += _literals(side)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "isin", "startswith", "endswith"):
                for arg in node.args:
                    literals += _literals(arg)
            hits = [v for v in literals if v in forbidden or any(v.startswith(f) for f in ("lorita N=",))]
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {hits}")
    assert not found, "method names compared outside benchmarks/methods/:\n" + "\n".join(found)


def test_the_literal_check_catches_a_comparison():
    # The check above must be able to fail: the same walk finds a planted comparison.
    tree = ast.parse('if cfg.method == "dense":\n    pass\nlabels.isin(("svd",))\n')
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert _literals(compares[0].comparators[0]) == ["dense"]
    assert _literals(calls[0].args[0]) == ["svd"]


# One config per method family, with the identities its stores and caches hold: config hash, budget hash, the
# training group (what runs of a grid share a trained model; the trained-model key before data identity) and the
# trained-model key on the embedded digits data. A change that moves one orphans every stored run or cached model.
DIGITS_FINGERPRINT = "77eaecbb1c985509"
BASE = {"model": "fcn", "model_kwargs": {"layers": 3, "width": 64}, "dataset": "digits",
        "budget": {"epochs": 20, "lr": 0.05}}
PINNED = [
    ({"method": "dense"}, ("3cb479e9dbcb", "857518c83322", "c7fde3643f12", "9c3762d182ae")),
    ({"method": "lorita", "factors": 3, "target_metric": "flops_drop", "target": 0.5},
     ("a6cb904de953", "857518c83322", "54cd53ada4ba", "e562f2530c95")),
    ({"method": "svd", "target_metric": "flops_drop", "target": 0.5},
     ("dabd594c1760", "857518c83322", "c7fde3643f12", "9c3762d182ae")),
    ({"method": "l1", "target_metric": "params_drop", "target": 0.3, "method_options": {"steps": 2}},
     ("bd84d4987a31", "857518c83322", "c7fde3643f12", "9c3762d182ae")),
    ({"method": "slim", "target_metric": "flops_drop", "target": 0.5, "method_options": {"reg": 1e-4}},
     ("7329730b2d0f", "857518c83322", "f6a7d56feafa", "7a17997cf870")),
]


def test_the_embedded_data_keeps_its_fingerprint():
    assert load_dataset("digits").fingerprint == DIGITS_FINGERPRINT


@pytest.mark.parametrize(("extra", "pinned"), PINNED, ids=[e["method"] for e, _ in PINNED])
def test_config_budget_and_trained_model_identities_are_pinned(extra, pinned):
    cfg = resolve(make_config({**BASE, **extra}))
    assert (cfg.config_hash(), cfg.budget.hash(), training_group(cfg), trained_key(cfg, DIGITS_FINGERPRINT)) == pinned


def test_a_field_added_later_enters_the_hash_only_away_from_its_default():
    @dataclasses.dataclass(frozen=True)
    class Old:
        lr: float = 0.1

    @dataclasses.dataclass(frozen=True)
    class New:
        lr: float = 0.1
        warmup: int = _spec(0, "an integer", lambda v: isinstance(v, int), added=True)

    assert stable_hash(identity(New())) == stable_hash(identity(Old()))
    assert stable_hash(identity(New(warmup=3))) != stable_hash(identity(Old()))
    assert identity(New(warmup=3)) == {"lr": 0.1, "warmup": 3}


def test_registry_answers_what_there_is():
    assert list(METHODS)[:3] == ["dense", "lorita", "svd"]
    for method in METHODS.values():
        assert method.description and method.citation and method.label
        assert method.compresses == (method.compress is not None)
    assert get_method("lorita").display_label(3, {}, None) == "LoRITa (N=3)"
    assert get_method("l1").display_label(1, {"steps": 3}, None) == "L1 norm (steps=3)"
    assert get_method("slim").tunable == ("reg",)
    with pytest.raises(ConfigError, match="method must be one of dense, lorita, svd, l1"):
        get_method("lorita2")
