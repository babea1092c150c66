"""Low-rank training baselines: a network trained to be low-rank, then SVD-truncated to the target as svd is.

nuclear: dense training with a nuclear-norm penalty on every layer compression factorizes. frob_decay: every layer
trained as a product of two factors with Frobenius decay on the product in place of weight decay on the factors.
Both penalties enter as a gradient added after backward (a training hook), so the loss, the optimizer and the
schedule stay those of the budget.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import lorita
from benchmarks.config import Budget, RunConfig
from benchmarks.methods.lowrank import INIT, PLAN_OPTIONS, collapsed, compress_lowrank
from benchmarks.methods.registry import Method, Option, SearchRange, StepHook, register, steps_option
from benchmarks.methods.structure import exclude_patterns
from lorita.compose import composed_factors
from lorita.linalg import reduced_svd

# A penalty strength is tuned like a learning rate: a decade either side of its default.
_DECADES = 10.0
# The budget's default weight decay (the authors' recipe): the scale both penalties are set against.
_BUDGET_DECAY = Budget().weight_decay


def _real(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def _add_grad(param: nn.Parameter, value: torch.Tensor) -> None:
    # A parameter the loss did not reach has no gradient; the penalty still pulls it.
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    param.grad.add_(value.reshape(param.shape))


# ---------------------------------------------------------------- nuclear norm

# Ours, not a published value (the papers' strengths are for other models and optimizers): at the budget's default
# weight decay, so that on a singular value of 1 (about a default-initialized layer's largest) the nuclear norm pulls
# as hard as weight decay does, and on the smaller ones, which truncation removes, harder.
NUCLEAR_REG = _BUDGET_DECAY


def _reg(cfg: RunConfig) -> float:
    return cfg.method_options.get("reg", NUCLEAR_REG)


def _nuclear_family(cfg: RunConfig) -> dict:
    return {"family": "nuclear", "reg": _reg(cfg)}


def _polar(matrix: torch.Tensor) -> torch.Tensor:
    """U V^T of the reduced SVD U S V^T: the nuclear norm's gradient (a subgradient where a singular value is 0)."""
    u, _, vh = reduced_svd(matrix)
    return u @ vh


def _nuclear_hook(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> StepHook:
    # The subgradient, not a proximal step (singular-value soft-thresholding after optimizer.step): it runs where the
    # training loop already calls a method's hook, under any optimizer, momentum and schedule of the budget, while a
    # proximal step would need the step's learning rate and is not the proximal operator of momentum SGD or Adam.
    # It never makes a singular value exactly 0; it need not, since truncation to the target follows.
    reg = _reg(cfg)
    weights = [layer.weight for layer in lorita.planned_layers(model, exclude_patterns(cfg, model)).values()]

    @torch.no_grad()
    def step() -> None:
        for weight in weights:
            _add_grad(weight, reg * _polar(weight.flatten(1)))

    return step


NUCLEAR = register(Method(
    name="nuclear",
    description="dense training with a nuclear-norm penalty on every compressed layer, SVD-truncated (Alvarez+ 2017)",
    citation="nuclear-norm regularized training as in Alvarez & Salzmann, NeurIPS 2017; default reg ours",
    label="Nuclear norm",
    compresses=True,
    report_rank=2,
    plain_training=False,
    options={"reg": Option("a number > 0", lambda v: _real(v) and v > 0,
                           search=SearchRange(NUCLEAR_REG / _DECADES, NUCLEAR_REG * _DECADES, log=True)),
             **PLAN_OPTIONS},
    family=_nuclear_family,
    training_hook=_nuclear_hook,
    steps=steps_option,
    compress=compress_lowrank,
    latency_form="rank",
))


# ---------------------------------------------------------------- Frobenius decay

# Khodak et al.'s factorized layer U V^T: overparameterize(model, 2) builds it (a Linear: in x in, then out x in; a
# conv: the k x k conv, then a 1x1 out x out conv), composing the layers LoRITa composes, so that with init default
# the two differ in the penalty alone.
FACTORS = 2
FROB_INIT = "spectral"  # the paper's


def _init(cfg: RunConfig) -> str:
    return cfg.method_options.get("init", FROB_INIT)


def _decay(cfg: RunConfig) -> float:
    # In place of weight decay: absent, the budget's coefficient.
    return cfg.method_options.get("decay", cfg.budget.weight_decay)


def _frob_family(cfg: RunConfig) -> dict:
    return {"family": "frob_decay", "init": _init(cfg), "decay": _decay(cfg)}


def _factorized(cfg: RunConfig, model: nn.Module) -> nn.Module:
    return lorita.overparameterize(model, FACTORS, mode=cfg.mode, init=_init(cfg))


def _pairs(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(first, second) factor weights of every composed layer and matrix: its weight is second @ first as matrices."""
    return [(factors[0], factors[1]) for factors in composed_factors(model).values()]


def _factor_weights(cfg: RunConfig, model: nn.Module) -> list[nn.Parameter]:
    # Their decay is the product's; biases and BatchNorm keep the budget's weight decay.
    return [weight for pair in _pairs(model) for weight in pair]


def _frobenius_hook(cfg: RunConfig, model: nn.Module, example: torch.Tensor) -> StepHook | None:
    # decay/2 ||B A||_F^2, as weight decay w is the gradient of w/2 ||W||^2 (and as Khodak et al.'s code applies it):
    # decay = weight_decay pulls the product as weight decay would pull a dense weight. Gradients decay (BA) A^T for B
    # and decay B^T (BA) for A; a conv's first factor viewed as out x in*k*k, its 1x1 second as out x out.
    decay, pairs = _decay(cfg), _pairs(model)
    if decay == 0:  # no penalty at all: the factors train undecayed
        return None

    @torch.no_grad()
    def step() -> None:
        for first, second in pairs:
            a, b = first.flatten(1), second.flatten(1)
            product = decay * (b @ a)
            _add_grad(second, product @ a.T)
            _add_grad(first, b.T @ product)

    return step


FROB_DECAY = register(Method(
    name="frob_decay",
    description="layers trained as two full-rank factors, Frobenius decay on their product, collapsed, "
                "SVD-truncated (Khodak+ 2021)",
    citation="Khodak, Tenenholtz, Mackey, Fusi, ICLR 2021",
    label="Frobenius decay",
    compresses=True,
    report_rank=2,
    plain_training=False,
    options={"init": INIT,
             "decay": Option("a number >= 0", lambda v: _real(v) and v >= 0,
                             search=SearchRange(_BUDGET_DECAY / _DECADES, _BUDGET_DECAY * _DECADES, log=True)),
             **PLAN_OPTIONS},
    family=_frob_family,
    build_for_training=_factorized,
    training_hook=_frobenius_hook,
    no_decay=_factor_weights,
    uncompressed=collapsed,
    steps=steps_option,
    compress=compress_lowrank,
    latency_form="rank",
))
