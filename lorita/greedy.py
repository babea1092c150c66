"""The LoRITa authors' greedy rank search (their `iter_training`), run until a FLOPs or parameter target is met.

Every round each planned layer is cut on its own, by its current step, in the network as the plan has it so far; the
cut whose network has the lowest mean loss on the given training batches is kept. Where the authors' code
(Compress_Code/utility/compress.py, layer_decompose_cnn_training; post_cnns.py) differs:
  - It scores cuts by cross-entropy over 99.99 % of the training set, unaugmented; ours by `loss_fn` over the batches
    it is given.
  - After each kept cut it measures test accuracy, fine-tunes when that is more than 1 % below a fixed reference and
    counts a failure when it still is; after four failures in a row it goes back to the last plan that passed and
    halves its step, until the step is below 1. Ours never looks at test data and stops at the target; a cut that
    would overshoot the target by more than the tolerance is halved until it fits (or is 1 rank, and left out).
  - Its step is one number of ranks for every layer of a model (32 for VGG-16, 8 for ResNet-20); ours is 1/8 of the
    ranks each layer keeps (at least 1), so cuts shrink with the rank. With one step of 32, a layer at rank 31 can
    only go to 1 next; on a trained MNIST FCN at a 0.9 FLOPs drop such a cut was a round's least bad one.
  - It prices every rank as U and V; ours prices a plan as factorize writes it (lorita.costs), so a layer's first cut
    goes straight to the highest rank at which two thin layers are cheaper than one: ranks above it cost as much as
    the whole layer and only lose accuracy.
  - It keeps every rank above 1; ours may cut a layer to rank 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lorita._validate import lowrank_layers
from lorita.costs import LayerCost
from lorita.linalg import reduced_svd
from lorita.matrices import Matrix
from lorita.spectra import weight_matrix

# A cut removes this fraction of the ranks a layer keeps (rounded up): the authors' first step on ResNet-20's 64-wide
# layers is 8 of 64.
STEP = 1 / 8

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cost = Callable[[LayerCost, int | None], int]


@dataclass
class _Layer:
    """One cuttable layer of the working copy: its SVD factors, where its cuts start and where it stands."""

    module: nn.Linear | nn.Conv2d | Matrix  # what holds the weight the cuts overwrite
    left: torch.Tensor  # U S (out x k), in the layer's dtype and on its device
    right: torch.Tensor  # V^T (k x fan_in)
    top: int  # the highest rank at which the layer is cheaper as two thin layers
    rank: int

    def weight(self, rank: int) -> torch.Tensor:
        """The layer's best rank-`rank` approximation, shaped as its weight."""
        return (self.left[:, :rank] @ self.right[:rank]).reshape(self.module.weight.shape)


def _top(cost: LayerCost) -> int:
    # r * (out + fan_in) < out * fan_in, the split rule of lorita.costs.splits, solved for the largest r; below 1 when
    # no rank of the layer is cheaper than the whole layer.
    return (cost.out * cost.fan_in - 1) // (cost.out + cost.fan_in)


def _layer(module: nn.Linear | nn.Conv2d | Matrix, cost: LayerCost) -> _Layer:
    weight = module.weight.detach()
    # One SVD per layer for the whole search, in float64 on the CPU as factorize computes it.
    u, s, vh = reduced_svd(weight_matrix(weight).to("cpu", torch.float64))
    kw = {"dtype": weight.dtype, "device": weight.device}
    return _Layer(module, (u * s).to(**kw), vh.to(**kw), top=_top(cost), rank=len(s))


def _mean_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> float:
    return sum(float(loss_fn(model(x), y)) for x, y in batches) / len(batches)


def greedy_ranks(model: nn.Module, layers: Mapping[str, LayerCost], base: int, cost: Cost, *, target: float,
                 tolerance: float, policy: str, batches: Sequence[Batch], loss_fn: LossFn) -> dict[str, int]:
    """Ranks of the `layers` of `model` whose plan drops `base` (FLOPs or params, priced by `cost`) by `target`.

    Starts from full ranks; the plan returned names every layer and drops within `tolerance` of `target` (of the last
    two plans around the target, the closer; on a tie the one that reaches it), else a ValueError. Evaluated in eval
    mode without gradients on a copy of `model`, whose weights the cuts overwrite in place.
    """
    work = copy.deepcopy(model).eval()
    ranks = {name: min(c.out, c.fan_in) for name, c in layers.items()}
    held = lowrank_layers(work)
    cuttable = {name: _layer(held[name], c) for name, c in layers.items() if _top(c) >= 1}

    def saving(name: str, rank: int) -> int:
        return cost(layers[name], None) - cost(layers[name], rank)

    largest = sum(saving(name, 1) for name in cuttable)
    if largest < (target - tolerance) * base:
        raise ValueError(f"target={target} for {policy} is unreachable: the largest reachable drop is "
                         f"{largest / base:.3f}")
    goal, limit = target * base, (target + tolerance) * base
    saved, before = 0, None  # before: (ranks, saved) of the plan before the last cut

    def proposal(name: str) -> int | None:
        layer = cuttable[name]
        step = math.ceil(layer.rank * STEP)
        while True:
            rank = max(1, min(layer.rank - step, layer.top))
            if rank >= layer.rank:  # at rank 1 already
                return None
            if saved - saving(name, layer.rank) + saving(name, rank) <= limit:
                return rank
            if step == 1:
                return None
            step //= 2  # the cut would overshoot the target: a finer one

    def trial(name: str, rank: int) -> float:
        layer = cuttable[name]
        kept = layer.module.weight.clone()
        layer.module.weight.copy_(layer.weight(rank))
        loss = _mean_loss(work, batches, loss_fn)
        layer.module.weight.copy_(kept)
        return loss

    with torch.no_grad(), tqdm(desc=f"greedy ranks ({policy} {target})", unit="cut", leave=False) as bar:
        while saved < goal:
            proposals = {name: rank for name in cuttable if (rank := proposal(name)) is not None}
            if not proposals:
                break
            losses = {name: trial(name, rank) for name, rank in proposals.items()}
            best = min(losses, key=losses.__getitem__)
            layer = cuttable[best]
            before = (dict(ranks), saved)
            saved += saving(best, proposals[best]) - saving(best, layer.rank)
            layer.rank = ranks[best] = proposals[best]
            layer.module.weight.copy_(layer.weight(layer.rank))
            bar.set_postfix_str(f"drop {saved / base:.3f}, loss {losses[best]:.4g}")
            bar.update()
    if saved >= goal and goal - before[1] < saved - goal:  # a cut was kept: saved starts at 0, below goal
        ranks, saved = before
    if abs(saved - goal) > tolerance * base:
        raise ValueError(f"target={target} for {policy} cannot be met within {tolerance} by search 'greedy': it "
                         f"stopped at a drop of {saved / base:.3f}")
    return ranks
