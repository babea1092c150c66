"""What a method is, and the registry every method enters where it is defined.

A method is one `Method` object holding everything that varies by method: its name, description, citation
and report label, whether it compresses, its options and their checks, how it trains, recovers and compresses.
The pipeline, sweeps and reports ask the object; none of them looks at a method's name.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.config import BUDGET_FIELDS, LATENCY_DROP, ConfigError, RunConfig, check_keys
from benchmarks.errors import did_you_mean

# A per-step hook run after loss.backward() and before optimizer.step() (a sparsity regularizer).
StepHook = Callable[[], None]
# compress(cfg, model, target=, reference=, example=, train_batches=, trained=, latency=) -> (compressed model,
# structure); model is the uncompressed network, trained the model as trained (Cuttlefish reads its ranks there),
# latency the network's benchmarks.latency.ModelLatency under a latency_drop target (else None).
Compress = Callable[..., tuple[nn.Module, dict]]


@dataclass(frozen=True)
class SearchRange:
    """Where tuning searches a number: [low, high], on a log scale when `log`."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Option:
    """One method option: what it allows (for the error message), its check, and where tuning searches it.

    `search` set makes the option tunable: a tuned comparison searches it over this range unless the sweep's
    tuning space names the option, so no method is tuned on fewer knobs than its design has.
    """

    allowed: str
    ok: Callable[[Any], bool]
    search: SearchRange | None = None

    @property
    def tunable(self) -> bool:
        return self.search is not None


def positive_int(v: object) -> bool:
    """Whether `v` is an int >= 1 (a bool is not)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# Progressive compression: k compress/fine-tune rounds inside the one fine-tune budget (Method.steps). The pipeline
# compresses round i to target * i / k of the uncompressed model and gives each round its share of the epochs.
STEPS = Option("an integer >= 1", positive_int)


def steps_option(cfg: RunConfig) -> int:
    """The rounds a method offering STEPS as `steps` makes: the option, absent 1."""
    return cfg.method_options.get("steps", 1)


@dataclass
class Switch:
    """A change of the model's structure between two epochs of training (Cuttlefish: full-rank layers to factors).

    Before each epoch until the change, `decide(model, history)` returns it (a dict of JSON types) or None; `apply(
    model, change)` makes it in place, and training continues with the optimizer and schedule rebuilt for the new
    parameters (the schedule's position and the learning rate carried over, the optimizer's state not). `measure(model)`
    adds numbers to every epoch's metrics. `made` is what happened, {"epoch": epochs before it, **change}, once it
    happened (or was read back from a checkpoint): the checkpoint holds it, and a resume applies it again before it
    loads the state.
    """

    decide: Callable[[nn.Module, list[dict[str, float]]], dict[str, Any] | None]
    apply: Callable[[nn.Module, dict[str, Any]], None]
    measure: Callable[[nn.Module], dict[str, float]]
    made: dict[str, Any] | None = None

    def reshaped(self, model: nn.Module, made: dict[str, Any]) -> nn.Module:
        """A copy of `model` with a recorded change (`made`, as a checkpoint holds it) made: to check a saved state
        against before `model` itself is touched."""
        shaped = copy.deepcopy(model)
        self.apply(shaped, {k: v for k, v in made.items() if k != "epoch"})
        return shaped

    def replay(self, model: nn.Module, made: dict[str, Any]) -> None:
        """Make a recorded change again on `model` in place, and hold it as made."""
        self.apply(model, {k: v for k, v in made.items() if k != "epoch"})
        self.made = made


def _same(cfg: RunConfig, model: nn.Module) -> nn.Module:
    return model


def _no_hook(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> StepHook | None:
    return None


def _no_switch(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> Switch | None:
    return None


def _no_check(cfg: RunConfig) -> None:
    return None


def _decay_all(cfg: RunConfig, model: nn.Module) -> list[nn.Parameter]:
    return []


def _applies(cfg: RunConfig, model: nn.Module, example: torch.Tensor, train_batches: list) -> str | None:
    return None


def _one_step(cfg: RunConfig) -> int:
    return 1


def _dense_family(cfg: RunConfig) -> dict:
    return {"family": "dense"}


@dataclass(frozen=True)
class Method:
    """One registered method.

    label: what every report prints ("LoRITa", "L1 norm"); `display_label` adds N and non-default options.
    compresses: False for the uncompressed reference (no target, no fine-tuning). composes: the method trains
    layers as products of `factors` maps (factors above 1 allowed). plain_training: the trained model is the
    network trained with the budget alone (at its factors), the reference of spectra and training-time ratios.
    report_rank: where the method's rows and lines come in reports (lower first).
    family: the cache identity of the trained model beyond model, data, budget and seed; methods with equal
    families share one trained model.
    no_decay: the parameters of the model built for training that the optimizer must not decay (a penalty of the
    method's own stands in for weight decay on them); every other parameter gets the budget's weight decay.
    check: the method's checks across fields (an option against the budget), after each option's own; a ConfigError.
    switch: the change of structure the method makes during training (built on the model before its first epoch), if
    any; the trained model is cached and reloaded with it applied.
    latency_form: the latency-table entries its compressed layers are priced by under a latency_drop target: "rank"
    (thin pairs by rank) or "width" (layers by pruned channel counts); None: the method takes no latency target.
    not_applicable: why the method cannot compress this model to the config's target (a dry run on the untrained
    model, `example` and `train_batches` as compress gets them), or None; a run it names is recorded not applicable,
    without training.
    """

    name: str
    description: str
    citation: str
    label: str
    compresses: bool
    report_rank: int
    composes: bool = False
    default_factors: int = 1
    plain_training: bool = True
    options: Mapping[str, Option] = field(default_factory=dict)
    check: Callable[[RunConfig], None] = _no_check
    family: Callable[[RunConfig], dict] = _dense_family
    build_for_training: Callable[[RunConfig, nn.Module], nn.Module] = _same
    training_hook: Callable[[RunConfig, nn.Module, torch.Tensor], StepHook | None] = _no_hook
    switch: Callable[[RunConfig, nn.Module, torch.Tensor], Switch | None] = _no_switch
    no_decay: Callable[[RunConfig, nn.Module], list[nn.Parameter]] = _decay_all
    uncompressed: Callable[[RunConfig, nn.Module], nn.Module] = _same
    steps: Callable[[RunConfig], int] = _one_step
    compress: Compress | None = None
    latency_form: str | None = None
    not_applicable: Callable[[RunConfig, nn.Module, torch.Tensor, list], str | None] = _applies

    @property
    def tunable(self) -> tuple[str, ...]:
        """The option keys a tuning stage may search."""
        return tuple(key for key, option in self.options.items() if option.tunable)

    def display_label(self, factors: int, options: Mapping[str, Any], exclude: Iterable[str] | None) -> str:
        """LoRITa (N=3), L1 norm (steps=3): how figures and tables name this method with these settings."""
        extras = [f"N={factors}"] if self.composes else []
        extras += [f"{key}={value}" for key, value in options.items()]
        if exclude is not None:
            # A non-default exclusion changes what is compressed: such runs must not share a line with default ones.
            extras.append(f"exclude={','.join(exclude)}")
        return f"{self.label} ({', '.join(extras)})" if extras else self.label

    def resolve(self, cfg: RunConfig) -> RunConfig:
        """Cross-field checks of a config of this method, and its default factors."""
        factors = cfg.factors if cfg.factors is not None else self.default_factors
        if not self.composes and factors != 1:
            raise ConfigError(f"config: factors applies to composing methods only ({self.name} trains with "
                              f"factors = 1); got {factors}")
        if not self.compresses:
            if cfg.target is not None or cfg.target_metric is not None:
                raise ConfigError(f"config: {self.name} is the uncompressed reference and takes no target")
        elif cfg.target is None or cfg.target_metric is None:
            raise ConfigError(f"config: method {self.name} needs a target: target_metric (flops_drop, "
                              "params_drop or latency_drop) and target in (0, 1)")
        elif cfg.target_metric == LATENCY_DROP and self.latency_form is None:
            raise ConfigError(f"config: target_metric latency_drop: {self.name} cannot be planned by measured latency")
        for key, value in cfg.method_options.items():
            if key in BUDGET_FIELDS:
                raise ConfigError(f"config: method_options.{key} would change the budget; set budget.{key} for "
                                  "every method of the comparison instead")
            if not self.options:
                raise ConfigError(f"config: method_options.{key}: {self.name} takes no method options")
            check_keys([key], self.options, context="config", prefix="method_options.", owner=self.name)
            if not self.options[key].ok(value):
                raise ConfigError(f"config: method_options.{key} must be {self.options[key].allowed}; got {value!r}")
        resolved = dataclasses.replace(cfg, factors=factors)
        self.check(resolved)
        return resolved


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Enter `method` in METHODS (once per name)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.compresses and method.compress is None:
        raise ValueError(f"method {method.name!r} compresses but has no compress function")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`; a ConfigError listing the registry otherwise."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ConfigError(f"config: method must be one of {', '.join(METHODS)}; got {name!r}"
                          f"{did_you_mean(name, METHODS)}")
    return method


def resolve(cfg: RunConfig) -> RunConfig:
    """A config with its method's checks passed and defaults filled, before any data is loaded."""
    return get_method(cfg.method).resolve(cfg)
