"""A sweep file's `tuning:` block: checked at the door, and what each method of the comparison searches.

Only what a method's best setting may differ in is searchable: the learning rates, weight decay, momentum, label
smoothing, LoRITa's N and each method's registered tunable options. Everything that defines the equal budget
(epochs, batch size, optimizer, augmentation, the validation split) is refused: every method gets the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks.config import BUDGET_FIELDS, MAX_SEED, TARGET_METRICS, Budget, ConfigError, check_keys, shown
from benchmarks.methods import Method, SearchRange, get_method

TUNING_KEYS = {
    "trials": "trials per method (the same for every method)",
    "space": "{hyper-parameter: {low, high, log} or [choices]}, and {method: {option or factors: ...}}",
    "objective": "mean (validation accuracy averaged over the grid's targets) or one target, e.g. {flops_drop: 0.5}",
    "sampler": "tpe or random",
    "seed": "seeds the sampler, the trials' training and the validation split",
    "val_fraction": "the stratified share of the training data held out for selection",
    "storage": "the Optuna storage: a postgresql:// URL or a journal file (*.log); default beside a SQLite store",
}
# Budget fields a method's best value may differ in; the rest of the budget is what makes the comparison equal.
SEARCHABLE = ("lr", "finetune_lr", "weight_decay", "momentum", "label_smoothing")
FACTORS = "factors"
SAMPLERS = ("tpe", "random")  # study.SAMPLERS builds them
MEAN = "mean"
DEFAULT_VAL_FRACTION = 0.1
RANGE_KEYS = ("low", "high", "log")

Dimension = SearchRange | tuple  # a range of numbers, or the choices


@dataclass(frozen=True)
class Tuning:
    """A checked tuning block."""

    trials: int
    shared: dict[str, Dimension]  # searched for every method that has the knob (budget fields, factors, options)
    per_method: dict[str, dict[str, Dimension]]  # factors or options searched for one method only
    objective: tuple[str, float] | None  # None: the mean over the grid's targets
    sampler: str = "tpe"
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    storage: str | None = None

    def identity(self) -> dict[str, Any]:
        """The block as it enters every tuned run's budget hash and config (where it is stored does not)."""
        space: dict[str, Any] = {key: _plain(dim) for key, dim in self.shared.items()}
        space.update({method: {key: _plain(dim) for key, dim in dims.items()}
                      for method, dims in self.per_method.items()})
        return {"trials": self.trials, "space": space,
                "objective": MEAN if self.objective is None else {self.objective[0]: self.objective[1]},
                "sampler": self.sampler, "seed": self.seed, "val_fraction": self.val_fraction}

    def searched_budget(self) -> tuple[str, ...]:
        """The budget fields this tuning searches (the same for every method)."""
        return tuple(key for key in self.shared if key in SEARCHABLE)

    def space_for(self, method: Method) -> dict[str, Dimension]:
        """Every knob `method` is searched over: the shared ones it has, and its own."""
        dims = {key: dim for key, dim in self.shared.items()
                if key in SEARCHABLE or (key == FACTORS and method.composes) or key in method.tunable}
        dims.update(self.per_method.get(method.name, {}))
        return dims


def _plain(dim: Dimension) -> Any:
    return dataclasses.asdict(dim) if isinstance(dim, SearchRange) else list(dim)


def _number(value: Any) -> float | None:
    # PyYAML reads 1e-3 as a string (YAML 1.1), as config does for real-valued fields.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _budget_check(key: str):
    spec = {f.name: f for f in dataclasses.fields(Budget)}[key]
    return spec.metadata["ok"], spec.metadata["allowed"]


def _dimension(where: str, value: Any, ok, allowed: str, *, choices_only: bool = False) -> Dimension:
    """One searched knob: {low, high, log} or a non-empty list of choices, each value allowed for the knob."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"sweep: {where} is an empty list of choices; give at least one value")
        for choice in value:
            if not ok(choice):
                raise ConfigError(f"sweep: {where} choices must each be {allowed}; got {shown(choice)}")
        return tuple(value)
    if choices_only or not isinstance(value, Mapping):
        form = "a list of choices" if choices_only else "{low: ..., high: ..., log: true|false} or a list of choices"
        raise ConfigError(f"sweep: {where} must be {form}; got {shown(value)}")
    check_keys(value, RANGE_KEYS, context="sweep", prefix=f"{where}.")
    for key in ("low", "high"):
        if key not in value:
            raise ConfigError(f"sweep: {where} needs {key} (a range is {{low: ..., high: ..., log: true|false}})")
    low, high = _number(value["low"]), _number(value["high"])
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"sweep: {where}.log must be true or false; got {shown(log)}")
    for key, number in (("low", low), ("high", high)):
        if number is None or not ok(number):
            raise ConfigError(f"sweep: {where}.{key} must be {allowed}; got {shown(value[key])}")
    if low >= high:
        raise ConfigError(f"sweep: {where}: low must be below high; got low {low:g}, high {high:g}")
    if log and low <= 0:
        raise ConfigError(f"sweep: {where}: a log range needs low > 0; got low {low:g}")
    return SearchRange(low, high, log)


def _factors(where: str, value: Any) -> Dimension:
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    return _dimension(where, value, ok, "an integer >= 1", choices_only=True)


def _allowed_keys(methods: list[Method]) -> list[str]:
    options = sorted({key for m in methods for key in m.tunable})
    return [*SEARCHABLE, FACTORS, *options, *(m.name for m in methods)]


def _refuse_budget(where: str, key: str) -> None:
    if key in BUDGET_FIELDS and key not in SEARCHABLE:
        raise ConfigError(f"sweep: {where} is refused: budget.{key} defines the equal budget every method gets; "
                          f"searchable: {', '.join(SEARCHABLE)}, {FACTORS} and the methods' tunable options")


def _shared(space: Mapping[str, Any], methods: list[Method]) -> tuple[dict[str, Dimension], dict[str, dict]]:
    shared: dict[str, Dimension] = {}
    per_method: dict[str, dict[str, Dimension]] = {}
    by_name = {m.name: m for m in methods}
    allowed = _allowed_keys(methods)
    for key, value in space.items():
        where = f"tuning.space.{key}"
        _refuse_budget(where, key)
        check_keys([key], allowed, context="sweep", prefix="tuning.space.")
        if key in by_name:
            per_method[key] = _method_space(by_name[key], value)
        elif key == FACTORS:
            if not any(m.composes for m in methods):
                raise ConfigError(f"sweep: {where} applies to composing methods only (lorita); none is in methods")
            shared[key] = _factors(where, value)
        elif key in SEARCHABLE:
            shared[key] = _dimension(where, value, *_budget_check(key))
        else:
            owners = [m for m in methods if key in m.tunable]
            shared[key] = _dimension(where, value, owners[0].options[key].ok, owners[0].options[key].allowed)
    return shared, per_method


def _method_space(method: Method, value: Any) -> dict[str, Dimension]:
    prefix = f"tuning.space.{method.name}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"sweep: {prefix} must be a mapping of {method.name}'s own knobs; got {shown(value)}")
    dims: dict[str, Dimension] = {}
    for key, dim in value.items():
        where = f"{prefix}.{key}"
        if key in SEARCHABLE:
            raise ConfigError(f"sweep: {where}: budget.{key} is searched for every method alike; put it in "
                              "tuning.space itself")
        _refuse_budget(where, key)
        if key == FACTORS:
            if not method.composes:
                raise ConfigError(f"sweep: {where}: factors applies to composing methods only ({method.name} "
                                  "trains with factors = 1)")
            dims[key] = _factors(where, dim)
            continue
        check_keys([key], [FACTORS, *method.tunable] if method.composes else list(method.tunable), context="sweep",
                   prefix=f"{prefix}.", owner=method.name, what="tunable key")
        option = method.options[key]
        dims[key] = _dimension(where, dim, option.ok, option.allowed)
    return dims


def _objective(value: Any, targets: list[tuple[str, float]]) -> tuple[str, float] | None:
    if value is None or value == MEAN:
        return None
    if isinstance(value, Mapping) and len(value) == 1:
        (metric, target), = value.items()
        check_keys([metric], TARGET_METRICS, context="sweep", prefix="tuning.objective.")
        if (metric, _number(target)) in targets:
            return metric, float(target)
    grid = ", ".join(f"{{{m}: {t:g}}}" for m, t in targets) or "none"
    raise ConfigError(f"sweep: tuning.objective must be {MEAN} or one of the grid's targets ({grid}); "
                      f"got {shown(value)}")


def parse_tuning(value: Any, methods: list[str], targets: list[tuple[str, float]]) -> Tuning:
    """A checked Tuning from a sweep file's `tuning:` mapping (one-line ConfigError naming the key)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"sweep: tuning must be a mapping of {', '.join(TUNING_KEYS)}; got {shown(value)}")
    check_keys(value, TUNING_KEYS, context="sweep", prefix="tuning.")
    for key in ("trials", "space"):
        if key not in value:
            raise ConfigError(f"sweep: tuning needs {key} ({TUNING_KEYS[key]})")
    trials = value["trials"]
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"sweep: tuning.trials must be an integer >= 1; got {shown(trials)}")
    space = value["space"]
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"sweep: tuning.space must be a non-empty mapping {TUNING_KEYS['space']}; got {shown(space)}")
    shared, per_method = _shared(space, [get_method(m) for m in methods])
    # A tunable option the space leaves out is searched over its registered range, written into the block so
    # that the identity says what was searched.
    for method in map(get_method, methods):
        for key in method.tunable:
            if key not in shared and key not in per_method.get(method.name, {}):
                per_method.setdefault(method.name, {})[key] = method.options[key].search
    sampler = value.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sweep: tuning.sampler must be one of {', '.join(SAMPLERS)}; got {shown(sampler)}")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"sweep: tuning.seed must be an integer in [0, 2**63 - 1]; got {shown(seed)}")
    fraction = _number(value.get("val_fraction", DEFAULT_VAL_FRACTION))
    if fraction is None or not 0 < fraction < 1:
        raise ConfigError("sweep: tuning.val_fraction must be a number in (0, 1) (the share held out for selection); "
                          f"got {shown(value.get('val_fraction'))}")
    storage = value.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise ConfigError(f"sweep: tuning.storage must be {TUNING_KEYS['storage']}; got {shown(storage)}")
    return Tuning(trials=trials, shared=shared, per_method=per_method, objective=_objective(value.get("objective"),
                  targets), sampler=sampler, seed=seed, val_fraction=fraction, storage=storage)
