"""Run configuration: plain dataclasses loaded from YAML or flags, validated once at the door."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A one-line message naming the bad key and what is allowed."""


# The trained-model cache, checkpoints, claims and outbox live below this folder unless told otherwise.
DEFAULT_CACHE_DIR = ".cache/lorita-bench"


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters with its length said, so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_keys(keys: Iterable[str], allowed: Iterable[str], *, context: str, prefix: str = "",
               owner: str | None = None, what: str = "key", error: type[ValueError] = ConfigError) -> None:
    """Raise `error` ("context: unknown key 'prefix.key' [for owner]; allowed: ...") for the first unknown key."""
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            where = f" for {owner}" if owner else ""
            raise error(f"{context}: unknown {what} {prefix + key!r}{where}; allowed: {', '.join(allowed) or 'none'}")


def _spec(default: Any, allowed: str, ok: Callable[[Any], bool], *, kind: type | None = None, added: bool = False,
          **kw: Any) -> Any:
    # `added`: a field that came after results were first stored; it enters the hashes only when set away from its
    # default, so stores and caches made before it existed keep their identities.
    metadata = {"allowed": allowed, "ok": ok, "kind": kind, "added": added}
    if callable(default) and not isinstance(default, str | int | float):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def _int(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _real(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = True):
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return ok


def _choice(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("plateau", "cosine", "step", "constant")
AUGMENTS = ("auto", "none", "crop_flip")
TARGET_METRICS = ("flops_drop", "params_drop", "latency_drop")
# The target planned by the measured latency table (benchmarks.latency) at latency_batch, not by counts.
LATENCY_DROP = "latency_drop"
# How latency is measured: PyTorch eager on the run's device, or ONNX Runtime on the CPU (the export extra)
# (benchmarks.latency.table.BACKENDS names them too).
LATENCY_BACKENDS = ("eager", "ort")
MODES = ("auto", "activation", "weight")
# Learning rates above this are typos (1e308 trains nothing but NaN); the largest in common recipes are about 10.
MAX_LR = 100.0
# torch.manual_seed and MLflow's integer params take a signed 64-bit seed.
MAX_SEED = 2**63 - 1
# MLflow refuses longer experiment and run names.
MAX_NAME = 500
# A file's SHA-256 as hashlib.hexdigest() writes it.
SHA256 = re.compile(r"[0-9a-f]{64}")
# Where a sweep's runs execute: processes on this machine, or Ray tasks (the ray extra).
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Budget:
    """Everything that must be identical across the methods of one comparison (the seed is not)."""

    epochs: int = _spec(30, "an integer >= 0", _int(0))
    finetune_epochs: int = _spec(5, "an integer >= 0", _int(0))
    optimizer: str = _spec("sgd", f"one of {', '.join(OPTIMIZERS)}", _choice(*OPTIMIZERS))
    lr: float = _spec(0.01, f"a number in (0, {MAX_LR:g}]", _real(0, MAX_LR, low_open=True, high_open=False),
                      kind=float)
    momentum: float = _spec(0.9, "a number in [0, 1)", _real(0, 1), kind=float)
    weight_decay: float = _spec(1e-3, "a number >= 0", _real(0), kind=float)
    label_smoothing: float = _spec(0.1, "a number in [0, 1)", _real(0, 1), kind=float)
    batch_size: int = _spec(128, "an integer >= 1", _int(1))
    schedule: str = _spec("plateau", f"one of {', '.join(SCHEDULES)}", _choice(*SCHEDULES))
    # The authors' ReduceLROnPlateau on train accuracy.
    plateau_factor: float = _spec(0.1, "a number in (0, 1)", _real(0, 1, low_open=True), kind=float)
    plateau_patience: int = _spec(15, "an integer >= 0", _int(0))
    finetune_lr: float = _spec(0.001, f"a number in (0, {MAX_LR:g}]",
                               _real(0, MAX_LR, low_open=True, high_open=False), kind=float)
    finetune_schedule: str = _spec("cosine", f"one of {', '.join(SCHEDULES)}", _choice(*SCHEDULES))
    augment: str = _spec("auto", f"one of {', '.join(AUGMENTS)}", _choice(*AUGMENTS))
    val_fraction: float = _spec(0.0, "a number in [0, 1)", _real(0, 1), kind=float)

    def hash(self) -> str:
        """Short stable hash: runs of one comparison share it."""
        return stable_hash(identity(self))


BUDGET_FIELDS = tuple(f.name for f in dataclasses.fields(Budget))


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(p, str) for p in v)


@dataclass(frozen=True)
class RunConfig:
    """One method at one compression target under one budget and seed."""

    experiment: str = _spec("lorita-bench", f"a non-empty string of at most {MAX_NAME} characters",
                            lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME)
    model: str = _spec("fcn", "a model name (see lorita-bench run --help)", lambda v: isinstance(v, str) and bool(v))
    model_kwargs: dict = _spec(dict, "a mapping of model options", lambda v: isinstance(v, dict))
    dataset: str = _spec("digits", "a dataset name", lambda v: isinstance(v, str) and bool(v))
    # Options of the dataset's loader (an image folder's `size`); benchmarks.data checks their keys and values.
    dataset_kwargs: dict = _spec(dict, "a mapping of dataset options", lambda v: isinstance(v, dict), added=True)
    data_root: str | None = _spec(None, "a directory path", lambda v: v is None or isinstance(v, str))
    method: str = _spec("lorita", "a method name", lambda v: isinstance(v, str) and bool(v))
    method_options: dict = _spec(dict, "a mapping of method options", lambda v: isinstance(v, dict))
    # None resolves to 3 for lorita and 1 for every other method (they train the plain network).
    factors: int | None = _spec(None, "an integer >= 1", lambda v: v is None or _int(1)(v))
    mode: str = _spec("auto", f"one of {', '.join(MODES)}", _choice(*MODES))
    target_metric: str | None = _spec(None, f"one of {', '.join(TARGET_METRICS)}",
                                      lambda v: v is None or v in TARGET_METRICS)
    target: float | None = _spec(None, "a number in (0, 1)",
                                 lambda v: v is None or _real(0, 1, low_open=True)(v), kind=float)
    # Module-name globs kept whole by compression; None keeps the classifier whole.
    exclude: list | None = _spec(None, "a list of module-name glob patterns", lambda v: v is None or _is_str_list(v))
    seed: int = _spec(0, "an integer in [0, 2**63 - 1]", _int(0, MAX_SEED))
    device: str = _spec("auto", "auto, cpu, cuda or cuda:N",
                        lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or v.startswith("cuda:")))
    cache_dir: str = _spec(DEFAULT_CACHE_DIR, "a directory path", lambda v: isinstance(v, str) and bool(v))
    # When another process is running this config on the store: wait for it (true) or report it HELD (false).
    wait: bool = _spec(False, "true or false", lambda v: isinstance(v, bool), added=True)
    # Seeds the validation split (budget.val_fraction) apart from the run's seed, so that runs of several seeds,
    # and tuning trials, hold out the same images; None: the run's seed.
    split_seed: int | None = _spec(None, "an integer in [0, 2**63 - 1]", lambda v: v is None or _int(0, MAX_SEED)(v),
                                   added=True)
    # The tuning block (benchmarks.tuning.space.Tuning.identity()) that selected this run's values; None: untuned.
    tuning: dict | None = _spec(None, "a tuning block's identity mapping", lambda v: v is None or isinstance(v, dict),
                                added=True)
    # The SHA-256 of the checkpoint file its trained model was imported from (lorita-bench import-authors): the run
    # compresses and fine-tunes those weights and trains nothing; None: the pipeline trains it under the budget.
    trained_from: str | None = _spec(None, "the SHA-256 of a checkpoint file (64 lowercase hex digits)",
                                     lambda v: v is None or (isinstance(v, str) and SHA256.fullmatch(v) is not None),
                                     added=True)
    # The batch size of a latency_drop target and of the latency recorded beside batch 1 (and its table's entries).
    latency_batch: int = _spec(128, "an integer >= 1", _int(1), added=True)
    latency_backend: str = _spec("eager", f"one of {', '.join(LATENCY_BACKENDS)}", _choice(*LATENCY_BACKENDS),
                                 added=True)
    budget: Budget = field(default_factory=Budget)

    def config_hash(self) -> str:
        """Hash of everything that defines the run's result (not where it runs or is stored)."""
        d = identity(self)
        for key in ("experiment", "data_root", "device", "cache_dir", "wait"):
            d.pop(key, None)
        return stable_hash(d)

    @property
    def split(self) -> int:
        """The seed of the validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def budget_hash(self) -> str:
        """What the methods of one comparison share: the budget, or for a tuned one the budget less the fields the
        tuning searched, plus the whole tuning block (the one sanctioned per-method difference is the values it
        selected)."""
        if self.tuning is None:
            return self.budget.hash()
        searched = set(self.tuning.get("space", {}))
        budget = {k: v for k, v in identity(self.budget).items() if k not in searched}
        return stable_hash({"budget": budget, "tuning": self.tuning})


def speedup_target(speedup: Any, name: str) -> float:
    """The latency_drop target of a speed-up S (latency falls by 1 - 1/S); a one-line ConfigError naming `name`
    unless S is a number > 1."""
    if isinstance(speedup, bool) or not isinstance(speedup, int | float) or not speedup > 1 or speedup == float("inf"):
        raise ConfigError(f"config: {name} must be a number > 1 (latency falls by 1 - 1/S); got {shown(speedup)}")
    return 1 - 1 / speedup


def identity(obj: Any) -> dict[str, Any]:
    """A config dataclass as the plain dict its hashes are made of: `added` fields only where not at their default."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = identity(value)
        elif not (f.metadata.get("added") and value == _default(f)):
            out[f.name] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def stable_hash(obj: Any) -> str:
    """12 hex digits of the SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _coerce(cls: type, prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, fields, context="config", prefix=prefix)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        f = fields[key]
        if key == "budget" and cls is RunConfig:
            out[key] = Budget(**_coerce(Budget, "budget.", {} if value is None else value))
            continue
        # PyYAML reads 1e-3 as a string (YAML 1.1); accept numeric strings for real-valued fields.
        if f.metadata.get("kind") is float and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not f.metadata["ok"](value):
            raise ConfigError(f"config: {name} must be {f.metadata['allowed']}; got {shown(value)}")
        out[key] = float(value) if f.metadata.get("kind") is float and value is not None else value
    return out


def make_config(data: Mapping[str, Any]) -> RunConfig:
    """A validated RunConfig from a (possibly nested) mapping."""
    cfg = RunConfig(**_coerce(RunConfig, "", data))
    if cfg.latency_backend == "ort" and importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("config: latency_backend ort needs ONNX Runtime, which is not installed: "
                          "pip install -e '.[export]'")
    return cfg


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. budget.lr=0.05); got {text!r}")
    try:
        return key.strip(), yaml.load(raw, Loader=_NoAliasLoader)
    except yaml.YAMLError:
        return key.strip(), raw


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (budget.lr) in a nested mapping copy."""
    data = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config: {dotted!r} sets a key inside {part!r}, which is not a mapping")
        node[last] = value
    return data


class _AliasRefused(yaml.YAMLError):
    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(f"alias *{anchor}")
        self.anchor, self.line = anchor, line


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load's loader, refusing aliases: nested aliases ("billion laughs") expand a few lines exponentially."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_NoAliasLoader) or {}
    except OSError as err:
        raise ConfigError(f"config: cannot read {path}: {err.strerror}") from None
    except _AliasRefused as err:
        raise ConfigError(f"config: {path} line {err.line}: YAML aliases (*{err.anchor}) are not accepted; write the "
                          "value out (an alias can expand a small file into gigabytes)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path}{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of keys; got {type(data).__name__}")
    return data


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (for YAML artifacts and MLflow params)."""
    return dataclasses.asdict(cfg)
