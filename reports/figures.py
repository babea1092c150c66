"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot, no display, no global state)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from benchmarks.tracking import schema
from reports import collect
from reports.tables import TARGET_NAMES, target_title

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v")
# Lines of runs that targeted the other metric are dashed when a panel holds both kinds.
TARGET_STYLES = {"flops_drop": "-", "params_drop": "--"}
DROP_NAMES = {schema.FLOPS_DROP: "FLOPs", schema.PARAMS_DROP: "parameters"}
MAX_SPECTRA_PANELS = 6


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.pdf; return both paths."""
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=130)
    # The layout computed for the PNG holds for the PDF: skipping a second constrained-layout pass saves ~40 %.
    fig.set_layout_engine("none")
    fig.savefig(pdf)
    return [png, pdf]


def _styles(runs: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """(colors, markers) by label. The reference is black everywhere, so a method keeps its color whether or not
    the reference is drawn; past the palette's length colors repeat and a different marker tells methods apart."""
    references = collect.reference_labels(runs)
    methods = [label for label in collect.ordered_labels(runs) if label not in references]
    colors = {**dict.fromkeys(references, "black"), **{label: PALETTE[i % len(PALETTE)] for i, label in
                                                        enumerate(methods)}}
    markers = {**dict.fromkeys(references, "o"), **{label: MARKERS[i // len(PALETTE) % len(MARKERS)] for i, label
                                                     in enumerate(methods)}}
    return colors, markers


def _legend_outside(ax: Axes) -> None:
    # Beside the axes: with many methods an inside legend hides points.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title, grid and the legend outside, as every single-axis figure has them."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)


def _factor_colors(factors: list[int]) -> dict[int, str]:
    """N = 1 is the dense model (black); each composed N gets the color LoRITa (N) has in the accuracy figures,
    where the composed models come first after the reference, by N."""
    composed = sorted(n for n in factors if n != 1)
    return {1: "black", **{n: PALETTE[i % len(PALETTE)] for i, n in enumerate(composed)}}


def _pct(series: pd.Series) -> np.ndarray:
    # One seed has no std: draw no error bar rather than drop the point.
    return 100 * series.fillna(0).to_numpy(dtype=float)


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points no other point beats in both x and y (higher is better for both)."""
    mask = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        mask[i] = not dominated.any()
    return mask


def tradeoff_figure(runs: pd.DataFrame, drop: str, title: str) -> Figure:
    """Accuracy after fine-tuning vs achieved drop, a line per method, mean ± std over seeds, Pareto marked."""
    compressed = runs[runs["target"].notna()]
    stats = collect.seed_stats(compressed, ["label", "target_metric", "target"], [drop, schema.ACC_FINETUNED])
    labels = collect.ordered_labels(compressed)
    colors, markers = _styles(runs)
    both = stats["target_metric"].nunique() > 1
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for label in labels:
        for metric, line in stats[stats["label"] == label].groupby("target_metric"):
            line = line.sort_values(f"{drop}_mean")
            name = f"{label} ({TARGET_NAMES.get(metric, metric)} targets)" if both else label
            ax.errorbar(_pct(line[f"{drop}_mean"]), _pct(line[f"{schema.ACC_FINETUNED}_mean"]),
                        xerr=_pct(line[f"{drop}_std"]), yerr=_pct(line[f"{schema.ACC_FINETUNED}_std"]),
                        color=colors[label], ls=TARGET_STYLES.get(metric, ":"), marker=markers[label], ms=5, capsize=3,
                        label=name)
    x, y = _pct(stats[f"{drop}_mean"]), _pct(stats[f"{schema.ACC_FINETUNED}_mean"])
    front = pareto_mask(x, y)
    ax.scatter(x[front], y[front], s=170, facecolors="none", edgecolors="black", linewidths=1.4, zorder=5,
               label="Pareto-optimal")
    reference = runs[runs["reference"].astype(bool)]
    if not reference.empty:
        acc = reference[schema.ACC_TRAINED]
        ax.axhline(100 * acc.mean(), color="black", ls=":", lw=1.2,
                   label=f"{reference['label'].iloc[0]} ({100 * acc.mean():.1f} %, {len(acc)} seeds)")
    _finish(ax, f"achieved {DROP_NAMES[drop]} drop (%)", "test accuracy after fine-tuning (%)", title)
    return fig


def imported_figure(runs: pd.DataFrame, title: str) -> Figure:
    """Accuracy vs achieved FLOPs drop of the runs on one imported checkpoint: a color per method label (rank
    policy), dashed with hollow markers before fine-tuning, solid after; dotted: the imported model itself."""
    accs = (schema.ACC_COMPRESSED, schema.ACC_FINETUNED)
    stats = collect.seed_stats(runs, ["label", "target_metric", "target"], [schema.FLOPS_DROP, *accs])
    colors, markers = _styles(runs)
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for label in collect.ordered_labels(runs):
        line = stats[stats["label"] == label].sort_values(f"{schema.FLOPS_DROP}_mean")
        for acc, style, stage in zip(accs, ("--", "-"), ("before fine-tuning", "after fine-tuning"), strict=True):
            ax.errorbar(_pct(line[f"{schema.FLOPS_DROP}_mean"]), _pct(line[f"{acc}_mean"]),
                        xerr=_pct(line[f"{schema.FLOPS_DROP}_std"]), yerr=_pct(line[f"{acc}_std"]), color=colors[label],
                        ls=style, marker=markers[label], mfc="none" if style == "--" else colors[label], ms=5,
                        capsize=3, label=f"{label}, {stage}")
    acc = runs[schema.ACC_TRAINED]
    ax.axhline(100 * acc.mean(), color="black", ls=":", lw=1.2, label=f"imported model ({100 * acc.mean():.1f} %)")
    _finish(ax, "achieved FLOPs drop (%)", "test accuracy (%)", title)
    return fig


def _log_x(ax: Axes, values: pd.Series) -> None:
    positive = values[values > 0]
    # Weight decay 0 has no place on a log axis: linear near zero, log beyond the smallest value used.
    if (values == 0).any() and not positive.empty:
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    else:
        ax.set_xscale("log")


def _figure_legend(fig: Figure) -> None:
    """One legend for all panels, right of them; entries from every panel (a method may miss a target)."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), fontsize=8, loc="outside right upper")


def _panels(fig: Figure, count: int, ncols: int = 3, *, share: bool = False) -> list[Axes]:
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    first = fig.add_subplot(nrows, ncols, 1)
    # Shared from the start, so that autoscaling sees every panel's data.
    shared = {"sharex": first, "sharey": first} if share else {}
    return [first, *(fig.add_subplot(nrows, ncols, i + 1, **shared) for i in range(1, count))]


def _spread(items: list[str], most: int) -> list[str]:
    """At most `most` items evenly spread over the list, first and last included."""
    if len(items) <= most:
        return items
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(picks))]


def spectra_figure(spectra: dict[int, tuple[int, dict[str, list[float]]]], title: str) -> Figure:
    """Per-layer singular values over the largest, log scale, a line per N (a selection of layers if many)."""
    factors = sorted(spectra)
    layers = _spread(list(spectra[factors[0]][1]), MAX_SPECTRA_PANELS)
    ncols = min(3, len(layers))
    fig = _figure(3.3 * ncols, 2.8 * math.ceil(len(layers) / ncols) + 0.5)
    colors = _factor_colors(factors)
    for ax, layer in zip(_panels(fig, len(layers)), layers, strict=True):
        lowest = 1.0
        for n in factors:
            seed, values = spectra[n]
            if layer not in values:
                continue
            sv = np.asarray(values[layer], dtype=float)
            lowest = min(lowest, sv.min() / sv.max())
            ax.semilogy(np.arange(1, len(sv) + 1), sv / sv.max(), color=colors[n], marker=".", ms=3,
                        lw=1, label=f"N={n}" + (" (dense)" if n == 1 else "") + f", seed {seed}")
        if lowest < 0.1:
            # Decades carry labels; the minor ones (2×10⁻¹ ...) would crowd. Under a decade they are the only ones.
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("index", fontsize=8)
        ax.set_ylabel("σ / σ_max", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    _figure_legend(fig)
    fig.suptitle(title, fontsize=10)
    return fig


def keep_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Accuracy of the truncated model (no fine-tuning) vs percent of singular values kept, a line per N."""
    stats = collect.seed_stats(curves, ["factors", "percent"], ["acc"]).sort_values(["factors", "percent"])
    factors = sorted(stats["factors"].unique())
    colors = _factor_colors(factors)
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for n in factors:
        line = stats[stats["factors"] == n]
        ax.errorbar(line["percent"], _pct(line["acc_mean"]), yerr=_pct(line["acc_std"]), color=colors[n],
                    marker="o", ms=4, capsize=3, label=f"N={n}" + (" (dense)" if n == 1 else "") +
                    f", {line['n'].max()} seeds")
    _finish(ax, "singular values kept per layer (%)", "test accuracy, no fine-tuning (%)", title)
    return fig


def train_time_figure(ratios: pd.DataFrame, title: str) -> Figure:
    """LoRITa training time over the dense model's, per N, mean ± std over seeds."""
    stats = collect.seed_stats(ratios, ["factors"], ["ratio"]).sort_values("factors")
    fig = _figure(5.0, 3.8)
    ax = fig.add_subplot()
    names = [f"N={n}" for n in stats["factors"]]
    means, stds = stats["ratio_mean"].to_numpy(), stats["ratio_std"].fillna(0).to_numpy()
    ax.bar(names, means, yerr=stds, capsize=4, color=PALETTE[0])
    for i, (mean, std, n) in enumerate(zip(means, stds, stats["n"], strict=True)):
        ax.annotate(f"{mean:.2f}× ({n} seeds)", (i, mean + std), textcoords="offset points", xytext=(0, 5),
                    ha="center", fontsize=8)
    ax.axhline(1.0, color="black", ls=":", lw=1.2, label="dense")
    # Headroom for the value labels above the error bars.
    ax.set_ylim(0, 1.18 * max(1.0, float((means + stds).max())))
    ax.set_ylabel("training time / dense training time")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def ablation_figure(runs: pd.DataFrame, x: str, xlabel: str, title: str, log_x: bool) -> Figure:
    """Accuracy after fine-tuning vs `x`, a panel per target (dense in each), a line per method."""
    dense = runs[runs["target"].isna()]
    compressed = runs[runs["target"].notna()]
    targets = sorted(compressed.groupby(["target_metric", "target"]).groups) or [None]
    colors, markers = _styles(runs)
    references = collect.reference_labels(runs)
    ncols = min(3, len(targets))
    fig = _figure(4.2 * ncols, 3.4 * math.ceil(len(targets) / ncols) + 0.4)
    for ax, target in zip(_panels(fig, len(targets)), targets, strict=True):
        part = dense if target is None else pd.concat(
            [dense, compressed[(compressed["target_metric"] == target[0]) & (compressed["target"] == target[1])]])
        stats = collect.seed_stats(part, ["label", x], [schema.ACC_FINETUNED]).sort_values(x)
        for label in collect.ordered_labels(part):
            line = stats[stats["label"] == label]
            ax.errorbar(line[x], _pct(line[f"{schema.ACC_FINETUNED}_mean"]),
                        yerr=_pct(line[f"{schema.ACC_FINETUNED}_std"]), color=colors[label], marker=markers[label],
                        ms=4, capsize=3, ls=":" if label in references else "-", label=label)
        if log_x:
            _log_x(ax, part[x])
        # Ticks at exactly the values that were run, without log-scale minor labels.
        used = sorted(part[x].unique())
        ax.set_xticks(used, [f"{v:g}" for v in used])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title("uncompressed" if target is None else target_title(*target), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy after fine-tuning (%)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    _figure_legend(fig)
    fig.suptitle(title, fontsize=10)
    return fig


def history_figure(history: pd.DataFrame, studies: pd.DataFrame, title: str) -> Figure:
    """Best-so-far validation objective against trial number, a line per study on one axis; faint: each trial's."""
    colors, markers = _styles(studies)
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for study in studies.itertuples():
        line = history[history["study"] == study.study]
        if line.empty:
            continue
        style = {"color": colors[study.label], "marker": markers[study.label]}
        ax.scatter(line["trial"], _pct(line["objective"]), s=16, alpha=0.3, **style)
        ax.step(line["trial"], _pct(line["best"]), where="post", ms=4, label=f"{study.label} ({len(line)} trials)",
                **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, "trial number", "best validation objective so far (%)", title)
    return fig


def decay_figure(trials: pd.DataFrame, studies: pd.DataFrame, title: str) -> Figure:
    """Each finished trial's validation objective against its weight decay (log x), a panel per study; diverged
    trials hollow, the selected one ringed."""
    colors, markers = _styles(studies)
    done = trials[(trials["status"] == schema.STATUS_FINISHED) & trials["weight_decay"].notna()]
    ncols = min(3, len(studies))
    fig = _figure(4.2 * ncols, 3.4 * math.ceil(len(studies) / ncols) + 0.4)
    # One scale for every panel, so that methods' weight decays compare at a glance.
    axes = _panels(fig, len(studies), share=True)
    if not done.empty:
        _log_x(axes[0], done["weight_decay"])
    for ax, study in zip(axes, studies.itertuples(), strict=True):
        part = done[done["study"] == study.study]
        color, marker = colors[study.label], markers[study.label]
        kept, lost = part[~part["diverged"].astype(bool)], part[part["diverged"].astype(bool)]
        ax.scatter(kept["weight_decay"], _pct(kept["objective"]), color=color, marker=marker, s=24)
        if not lost.empty:
            ax.scatter(lost["weight_decay"], _pct(lost["objective"]), facecolors="none", edgecolors=color,
                       marker=marker, s=30, label="diverged (objective 0)")
        chosen = part[part["trial"] == study.trial] if not pd.isna(study.trial) else part.iloc[0:0]
        if not chosen.empty:
            ax.scatter(chosen["weight_decay"], _pct(chosen["objective"]), s=150, facecolors="none",
                       edgecolors="black", linewidths=1.3, zorder=5, label="selected")
        ax.set_title(study.label, fontsize=9)
        ax.set_xlabel("weight decay")
        ax.set_ylabel("validation objective (%)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    _figure_legend(fig)
    fig.suptitle(title, fontsize=10)
    return fig
