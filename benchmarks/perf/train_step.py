"""One SGD training step of LoRITa (factors 2 and 3; activation, weight and auto modes) relative to dense.

Dense and LoRITa steps alternate in one process (dense, LoRITa, dense, LoRITa, ...); after warm-up the median of the
per-pair ratios LoRITa / preceding dense is reported, next to each side's median ms/step. The analytic column is the
extra forward multiply-adds of each mode's per-layer choice (formulas of compose.py's use_weight_product) relative to
the dense model's forward (fvcore, at the same batch). A second table times, the same way, the step of each method
whose training is not dense's (`--methods`; default the low-rank training baselines) as the pipeline takes it: the
method's training model, its optimizer groups and its per-step hook (Cuttlefish's after its switch to factors).

    python -m benchmarks.perf.train_step [--out DIR] [--quick] [--device cpu|cuda|auto] [--models vgg16 ...]
        [--methods nuclear frob_decay ...]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import lorita
from benchmarks.config import make_config
from benchmarks.methods import METHODS, get_method, resolve
from benchmarks.models import create_model
from benchmarks.perf import common
from benchmarks.run.measure import training_step
from benchmarks.run.train import Phase, make_optimizer
from lorita.compose import COMPOSED, ComposedConv2d, ComposedLinear, composed_factors, conv_output_size, set_mode
from lorita.forward import probe

NAME = "train_step"
# (input shape, dataset it stands for) per model; every model has 10 classes. The sequence models take MNIST as rows
# (28 steps of 28 features) at their default sizes; their recurrent and attention weights are composed in place
# (lorita.product), always as products, so every mode times the same there.
MODELS: dict[str, tuple[tuple[int, ...], str]] = {
    "vgg16": ((3, 32, 32), "CIFAR"),
    "resnet20": ((3, 32, 32), "CIFAR"),
    "fcn": ((1, 28, 28), "MNIST"),
    "vit": ((3, 32, 32), "CIFAR"),
    "lstm": ((28, 28), "MNIST-seq"),
    "transformer": ((28, 28), "MNIST-seq"),
}
MODES = ("activation", "weight", "auto")
# Targets of the Performance issue (2-core CPU, batch 128): LoRITa step / dense step at factors=3, mode auto.
TARGETS = {("resnet20", 3, "auto"): 1.05, ("vgg16", 3, "auto"): 1.15}
TARGET_SETTING = ("cpu", 128)  # the targets are judged only at this (device type, batch)
QUICK_MODELS = ("resnet20", "fcn")
# Methods whose training step is not dense's: the low-rank training baselines' penalties run every step.
TRAINING_METHODS = ("nuclear", "frob_decay", "cuttlefish")
# measure.training_step's optimizer and loss, so that the method and the dense step differ in the method alone.
STEP_PHASE = Phase(epochs=1, lr=1e-3, schedule="constant", optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                   label_smoothing=0.1, batch_size=1, augment=False)


def input_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The input shape of every composed layer in one eval-mode forward of `x` (a layer called twice: last call)."""
    shapes: dict[str, tuple[int, ...]] = {}
    probe(model, x, {module: lambda m, args, out, name=name: shapes.__setitem__(name, tuple(args[0].shape))
                     for name, module in model.named_modules() if isinstance(module, COMPOSED)})
    return shapes


def layer_macs(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(dense, extra on the activation path, extra on the weight path) forward multiply-adds of one composed layer."""
    extra = len(module.factors) - 1
    if isinstance(module, ComposedLinear):
        rows = torch.Size(shape).numel() // module.in_features
        d_in, d_out = module.in_features, module.out_features
        return rows * d_in * d_out, extra * rows * d_in**2, extra * d_out * d_in**2
    assert isinstance(module, ComposedConv2d)
    first = module.factors[0]
    batch = torch.Size(shape[:-3]).numel()
    h_out, w_out = conv_output_size(first, shape[-2], shape[-1])
    k = first.kernel_size[0] * first.kernel_size[1]
    positions, c_in, c_out = batch * h_out * w_out, first.in_channels, first.out_channels
    return positions * c_out * c_in * k, extra * positions * c_out**2, extra * c_out**2 * c_in * k


def analytic(model: nn.Module, shapes: dict[str, tuple[int, ...]], mode: str) -> dict[str, int]:
    """Extra forward multiply-adds of `mode`'s per-layer choice (the layer's own use_weight_product decides), and of
    the read-directly weights, whose product (N - 1 products of out x in by in x in) is formed once per forward."""
    modules = dict(model.named_modules())
    products = [factors for name, factors in composed_factors(model).items() if name not in shapes]
    extra = sum((len(f) - 1) * f[-1].shape[0] * f[0].shape[1] ** 2 for f in products)
    weight_layers = len(products)
    for name, shape in shapes.items():
        module = modules[name]
        saved, module.mode = module.mode, mode
        try:
            use_weight = module.use_weight_product(torch.empty(shape, device="meta"))
        finally:
            module.mode = saved
        _, on_activations, on_weights = layer_macs(module, shape)
        extra += on_weights if use_weight else on_activations
        weight_layers += int(use_weight)
    return {"extra_macs": extra, "weight_layers": weight_layers, "layers": len(shapes) + len(products)}


def _dense_batch(name: str, batch: int, device: torch.device) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
    """The model's dataset name, its dense network (seed 0) and one random batch."""
    in_shape, dataset = MODELS[name]
    torch.manual_seed(0)
    dense = create_model(name, 10, in_shape).to(device)
    x = torch.randn(batch, *in_shape, device=device)
    return dataset, dense, x, torch.randint(0, 10, (batch,), device=device)


def bench_model(name: str, *, batch: int, factors: list[int], modes: list[str], warmup: int, repeats: int,
                device: torch.device) -> list[dict[str, Any]]:
    dataset, dense, x, y = _dense_batch(name, batch, device)
    dense_macs = lorita.count_flops_params(dense, x[:1])[0] * batch  # fvcore's count is linear in the batch
    dense_step = training_step(dense, x, y)
    rows = []
    for n in factors:
        composed = lorita.overparameterize(dense, n, mode="auto")
        shapes = input_shapes(composed, x)
        lorita_step = training_step(composed, x, y)
        for mode in modes:
            set_mode(composed, mode)
            times = common.interleaved([("dense", dense_step), ("lorita", lorita_step)], warmup=warmup,
                                       repeats=repeats, device=device)
            ratios = [lo / de for de, lo in zip(times["dense"], times["lorita"], strict=True)]
            macs = analytic(composed, shapes, mode)
            target = TARGETS.get((name, n, mode)) if (device.type, batch) == TARGET_SETTING else None
            ratio = common.median(ratios)
            rows.append({
                "model": name, "dataset": dataset, "batch": batch, "factors": n, "mode": mode, "device": str(device),
                "dense_ms": 1000 * common.median(times["dense"]), "lorita_ms": 1000 * common.median(times["lorita"]),
                "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios), "steps": len(ratios),
                "dense_fwd_macs": dense_macs, "extra_fwd_macs": macs["extra_macs"],
                "extra_fwd_macs_rel": macs["extra_macs"] / dense_macs,
                "weight_path_layers": macs["weight_layers"], "composed_layers": macs["layers"],
                "target": target, "met": None if target is None else ratio <= target,
            })
            print(f"  {name} factors={n} {mode}: {rows[-1]['dense_ms']:.1f} ms dense, "
                  f"{rows[-1]['lorita_ms']:.1f} ms LoRITa, x{ratio:.3f}", flush=True)
    return rows


def method_step(method_name: str, model_name: str, dense: nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> Callable[[], None]:
    """One training step of a method as the pipeline takes it: its training model, optimizer groups and hook."""
    method = get_method(method_name)
    cfg = resolve(make_config({"model": model_name, "method": method_name,
                               **({"target_metric": "flops_drop", "target": 0.5} if method.compresses else {})}))
    model = method.build_for_training(cfg, copy.deepcopy(dense))
    switch = method.switch(cfg, model, x[:2])
    if switch is not None:  # timed after its change of structure, as it comes at the latest (the budget's last epoch)
        switch.apply(model, switch.decide(model, [switch.measure(model)] * (cfg.budget.epochs - 1)))
    optimizer = make_optimizer(model, STEP_PHASE, method.no_decay(cfg, model))
    hook = method.training_hook(cfg, model, x[:2])
    criterion = nn.CrossEntropyLoss(label_smoothing=STEP_PHASE.label_smoothing)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        if hook is not None:
            hook()
        optimizer.step()

    return step


def bench_methods(name: str, methods: list[str], *, batch: int, warmup: int, repeats: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """Each method's training step against dense's, interleaved as the LoRITa rows are."""
    dataset, dense, x, y = _dense_batch(name, batch, device)
    dense_step = training_step(dense, x, y)
    rows = []
    for method in methods:
        times = common.interleaved([("dense", dense_step), ("method", method_step(method, name, dense, x, y))],
                                   warmup=warmup, repeats=repeats, device=device)
        ratios = [me / de for de, me in zip(times["dense"], times["method"], strict=True)]
        rows.append({"model": name, "dataset": dataset, "batch": batch, "method": method, "device": str(device),
                     "dense_ms": 1000 * common.median(times["dense"]),
                     "method_ms": 1000 * common.median(times["method"]), "ratio": common.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "steps": len(ratios)})
        print(f"  {name} {method}: {rows[-1]['dense_ms']:.1f} ms dense, {rows[-1]['method_ms']:.1f} ms, "
              f"x{rows[-1]['ratio']:.3f}", flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = {"quick": args.quick, "models": args.models, "batch": args.batch, "factors": args.factors,
                "modes": args.modes, "methods": args.methods, "warmup": args.warmup, "repeats": args.repeats,
                "device": str(args.device), "optimizer": "SGD(lr=1e-3, momentum=0.9, weight_decay=5e-4)",
                "loss": "CE(label_smoothing=0.1)"}
    rows, method_rows = [], []
    for name in args.models:
        rows += bench_model(name, batch=args.batch, factors=args.factors, modes=args.modes, warmup=args.warmup,
                            repeats=args.repeats, device=args.device)
        method_rows += bench_methods(name, args.methods, batch=args.batch, warmup=args.warmup, repeats=args.repeats,
                                     device=args.device)
    return common.result(NAME, settings, rows, methods=method_rows)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = []
    for r in result["rows"]:
        target = "" if r["target"] is None else f"≤ {r['target']:.2f} ({'met' if r['met'] else 'MISSED'})"
        rows.append([r["model"], r["factors"], r["mode"], common.fmt(r["dense_ms"], 1), common.fmt(r["lorita_ms"], 1),
                     f"{r['ratio']:.3f}", f"{100 * r['extra_fwd_macs_rel']:+.1f}%",
                     f"{r['weight_path_layers']}/{r['composed_layers']}", target])
    head = (f"### Training step, LoRITa vs dense ({s['device']}, batch {s['batch']}, median of {s['repeats']} "
            f"interleaved pairs after {s['warmup']} warm-up)\n\n"
            "ratio: median over pairs of LoRITa step / the dense step just before it. extra MACs: analytic extra "
            "forward multiply-adds of the mode's per-layer choice relative to the dense forward. weight path: "
            "composed layers that multiply the weights first.\n\n")
    text = head + common.table(["model", "factors", "mode", "dense ms", "LoRITa ms", "ratio", "extra MACs",
                                "weight path", "target"], rows)
    methods = result.get("methods")
    if methods:
        text += (f"\n\n### Training step of the methods whose training is not dense's ({s['device']}, batch "
                 f"{s['batch']}, same pairs)\n\nratio: median over pairs of the method's step (its training model, "
                 "optimizer groups and per-step hook) / the dense step just before it.\n\n")
        text += common.table(["model", "method", "dense ms", "method ms", "ratio"],
                             [[r["model"], r["method"], common.fmt(r["dense_ms"], 1), common.fmt(r["method_ms"], 1),
                               f"{r['ratio']:.3f}"] for r in methods])
    return text


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--device", type=common.device_arg, default=torch.device("cpu"), help="cpu (default), cuda, auto")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128; 2 with --quick)")
    p.add_argument("--factors", nargs="+", type=int, default=[2, 3])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--methods", nargs="*", choices=list(METHODS), default=list(TRAINING_METHODS),
                   help=f"methods timed against dense (default {' '.join(TRAINING_METHODS)}; none: leave out)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up pairs (default 2; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed pairs (default 7; 1 with --quick)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.setup(build_parser().parse_args(argv))
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.batch = args.batch or (2 if args.quick else 128)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats or (1 if args.quick else 7)
    return common.finish(NAME, run(args), args.out, markdown)


if __name__ == "__main__":
    main()
