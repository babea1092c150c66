"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot, no display, no global state)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import ScaledTranslation

from benchmarks.tracking import schema
from reports import collect, latency
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


# Achieved drops closer than this count as one operating point (the planners meet a target within 1 pp).
PARETO_TOLERANCE = 0.01
# How far apart, in points, markers of methods at one target are drawn (their x is exact in the tables).
DODGE_PT = 4.0


def pareto_mask(x: np.ndarray, y: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Points no other point beats (higher is better for both x and y), x values within `tolerance` counting as
    equal: a point is dominated by one at least as good in y and within `tolerance` of it or beyond in x, better in
    y or in x by more than `tolerance`."""
    mask = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        as_far = x >= x[i] - tolerance
        better = (y > y[i]) | (x > x[i] + tolerance)
        mask[i] = not (as_far & (y >= y[i]) & better).any()
    return mask


def clipped_errors(mean: np.ndarray, std: np.ndarray, low: float = 0.0, high: float = 100.0) -> np.ndarray:
    """(lower, upper) error-bar lengths of mean ± std kept inside [low, high] (an accuracy never above 100 %)."""
    mean, std = np.asarray(mean, dtype=float), np.nan_to_num(np.asarray(std, dtype=float))
    return np.vstack([np.minimum(std, mean - low), np.minimum(std, high - mean)]).clip(min=0)


def _dodges(ax: Axes, labels: list[str]) -> dict[str, object]:
    """{label: transform} drawing each method shifted sideways by a few points, centered on the true x."""
    middle = (len(labels) - 1) / 2
    return {label: ax.transData + ScaledTranslation((i - middle) * DODGE_PT / 72, 0, ax.figure.dpi_scale_trans)
            for i, label in enumerate(labels)}


def measured(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with numbers: not those whose method could not compress the model."""
    return runs[~collect.not_applicable(runs)]


def _reference_line(ax: Axes, runs: pd.DataFrame) -> None:
    """The uncompressed reference's accuracy as a dotted line, when the comparison has one."""
    reference = runs[runs["reference"].astype(bool)]
    if reference.empty:
        return
    acc = reference[schema.ACC_TRAINED]
    ax.axhline(100 * acc.mean(), color="black", ls=":", lw=1.2,
               label=f"{reference['label'].iloc[0]} ({100 * acc.mean():.1f} %, {seeds_text(reference['seed'])})")


def seeds_text(seeds: Iterable[int]) -> str:
    """'seed 0' or '3 seeds (0, 1, 2)'."""
    seeds = sorted({int(seed) for seed in seeds})
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def _method_lines(ax: Axes, stats: pd.DataFrame, x: str, runs: pd.DataFrame, shifts: dict[str, object]) -> None:
    """A line per method and target metric: mean ± std accuracy after fine-tuning (bars clipped at 100 %) at x, each
    method drawn with its transform in `shifts` where given."""
    labels = [label for label in collect.ordered_labels(runs) if label in set(stats["label"])]
    colors, markers = _styles(runs)
    both = stats["target_metric"].nunique() > 1
    acc = schema.ACC_FINETUNED
    for label in labels:
        for metric, line in stats[stats["label"] == label].groupby("target_metric"):
            # Joined in target order: the operating points as requested.
            line = line.sort_values("target")
            name = f"{label} ({TARGET_NAMES.get(metric, metric)} targets)" if both else label
            means = _pct(line[f"{acc}_mean"])
            scale = 100 if x in DROP_NAMES else 1
            xs = scale * line[f"{x}_mean"].to_numpy(float)
            # A range where the stats give one (speed-ups: lowest to highest seed), else ± std.
            xerr = (np.vstack([xs - line[f"{x}_low"], line[f"{x}_high"] - xs]) if f"{x}_low" in line else
                    np.vstack([scale * line[f"{x}_std"].fillna(0).to_numpy(float)] * 2))
            yerr = clipped_errors(means, _pct(line[f"{acc}_std"]))
            ax.errorbar(xs, means, xerr=xerr, yerr=yerr, color=colors[label], ls=TARGET_STYLES.get(metric, ":"),
                        marker=markers[label], ms=5, capsize=3, label=name,
                        **({"transform": shifts[label]} if label in shifts else {}))
            # Autoscaling skips artists drawn with an offset transform: the limits are the data's.
            ax.update_datalim(np.column_stack([np.r_[xs - xerr[0], xs + xerr[1]], np.r_[means - yerr[0],
                                                                                    means + yerr[1]]]))
    ax.autoscale_view()


def tradeoff_figure(runs: pd.DataFrame, drop: str, title: str) -> Figure:
    """Accuracy after fine-tuning vs achieved drop, a line per method, mean ± std over seeds (clipped at 100 %),
    methods at one target drawn a few points apart, Pareto points (within PARETO_TOLERANCE of drop) ringed."""
    compressed = measured(runs[runs["target"].notna()])
    stats = collect.seed_stats(compressed, ["label", "target_metric", "target"], [drop, schema.ACC_FINETUNED])
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    shifts = _dodges(ax, collect.ordered_labels(compressed))
    _method_lines(ax, stats, drop, runs, shifts)
    x, y = _pct(stats[f"{drop}_mean"]), _pct(stats[f"{schema.ACC_FINETUNED}_mean"])
    front = pareto_mask(x, y, 100 * PARETO_TOLERANCE)
    for k, i in enumerate(np.flatnonzero(front)):
        ax.scatter(x[i], y[i], s=170, facecolors="none", edgecolors="black", linewidths=1.4, zorder=5,
                   transform=shifts[stats["label"].iloc[i]], label="_nolegend_" if k else "Pareto-optimal")
    _reference_line(ax, runs)
    _finish(ax, f"achieved {DROP_NAMES[drop]} drop (%)", "test accuracy after fine-tuning (%)", title)
    return fig


def speedup_figure(runs: pd.DataFrame, batches: list[int], title: str) -> Figure:
    """Accuracy after fine-tuning (mean ± std over seeds) vs measured speed-up (median over seeds, a bar from the
    lowest to the highest; log scale), a panel per batch size, a line per method; the reference at 1×."""
    compressed = measured(runs[runs["target"].notna()])
    fig = _figure(5.2 * len(batches) + 2.4, 4.2)
    keys = ["label", "target_metric", "target"]
    for ax, batch in zip(_panels(fig, len(batches), ncols=len(batches)), batches, strict=True):
        part = compressed.assign(speedup=latency.speedups(runs, batch)[compressed.index])
        part = part[part["speedup"].notna()]
        if not part.empty:
            spread = part.groupby(keys, sort=False)["speedup"].agg(speedup_mean="median", speedup_low="min",
                                                                  speedup_high="max").reset_index()
            stats = collect.seed_stats(part, keys, [schema.ACC_FINETUNED]).merge(spread, on=keys)
            _method_lines(ax, stats, "speedup", runs, {})
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _reference_line(ax, runs)
        ax.axvline(1.0, color="black", ls=":", lw=0.8)
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.set_xlabel("measured speed-up over the uncompressed model (×)")
        ax.set_ylabel("test accuracy after fine-tuning (%)", fontsize=8)
        ax.grid(alpha=0.3)
    _figure_legend(fig)
    fig.suptitle(title, fontsize=10)
    return fig


def has_predictions(runs: pd.DataFrame, batches: list[int]) -> list[int]:
    """The batches at which some run recorded both a predicted and a measured latency."""
    return [b for b in batches if (latency.column(runs, schema.latency_at("pred_ms", b)).notna()
                                   & latency.column(runs, schema.latency_at("ms", b)).notna()).any()]


def prediction_figure(runs: pd.DataFrame, batches: list[int], title: str, band: float = 0.15) -> Figure:
    """Predicted (latency table) against measured latency of every run that has both, log-log, a panel per batch;
    the diagonal and a ±`band` corridor; hollow markers: measured under load."""
    colors, markers = _styles(runs)
    fig = _figure(4.6 * len(batches) + 2.4, 4.2)
    for ax, batch in zip(_panels(fig, len(batches), ncols=len(batches)), batches, strict=True):
        pred = latency.column(runs, schema.latency_at("pred_ms", batch))
        ms = latency.column(runs, schema.latency_at("ms", batch))
        part = runs.assign(pred=pred, ms=ms)
        part = part[part["pred"].notna() & part["ms"].notna()]
        for label in collect.ordered_labels(part):
            mine = part[part["label"] == label]
            for loaded, points in mine.groupby(mine["under_load"].astype(bool)):
                ax.scatter(points["pred"], points["ms"], s=26, marker=markers[label], edgecolors=colors[label],
                           facecolors="none" if loaded else colors[label],
                           label=label + (" (under load)" if loaded else ""))
        low, high = float(min(part["pred"].min(), part["ms"].min())) / 1.3, float(max(part["pred"].max(),
                                                                                     part["ms"].max())) * 1.3
        line = np.geomspace(low, high, 50)
        ax.plot(line, line, color="black", lw=1, label="measured = predicted")
        ax.fill_between(line, line * (1 - band), line * (1 + band), color="black", alpha=0.08,
                        label=f"±{100 * band:.0f} %")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        errors = (part["ms"] - part["pred"]).abs() / part["ms"]
        ax.set_title(f"batch {batch}: {int((errors <= band).sum())} of {len(part)} within ±{100 * band:.0f} %",
                     fontsize=9)
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("measured latency (ms)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    _figure_legend(fig)
    fig.suptitle(title, fontsize=10)
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
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _figure_legend(fig: Figure) -> None:
    """One legend for all panels, right of them; entries from every panel (a method may miss a target)."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), fontsize=8, loc="outside right upper")


def _panels(fig: Figure, count: int, ncols: int = 3, *, share: bool | str = False) -> list[Axes]:
    """`count` panels; share True: one x and one y range for all, "y": one y range."""
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    first = fig.add_subplot(nrows, ncols, 1)
    # Shared from the start, so that autoscaling sees every panel's data.
    shared = {"sharex": first, "sharey": first} if share is True else {"sharey": first} if share == "y" else {}
    return [first, *(fig.add_subplot(nrows, ncols, i + 1, **shared) for i in range(1, count))]


def _spread(items: list[str], most: int) -> list[str]:
    """At most `most` items evenly spread over the list, first and last included."""
    if len(items) <= most:
        return items
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(picks))]


def spectra_figure(spectra: collect.Spectra, layers: list[str], title: str) -> Figure:
    """Per-layer singular values over the largest, log scale, one y-range for all panels, a line per N: the mean
    over seeds with a band from the lowest to the highest seed (a selection of `layers` if many)."""
    factors = sorted(spectra)
    shown = _spread(layers, MAX_SPECTRA_PANELS)
    ncols = min(3, len(shown))
    fig = _figure(3.3 * ncols, 2.8 * math.ceil(len(shown) / ncols) + 0.5)
    colors = _factor_colors(factors)
    lowest = 1.0
    for ax, layer in zip(_panels(fig, len(shown), share="y"), shown, strict=True):
        for n in factors:
            curves = [np.asarray(values[layer], dtype=float) for values in spectra[n].values() if layer in values]
            if not curves:
                continue
            normalized = np.vstack([sv / sv.max() for sv in curves])
            lowest = min(lowest, float(normalized[normalized > 0].min()))
            index = np.arange(1, normalized.shape[1] + 1)
            seeds = len(curves)
            ax.semilogy(index, normalized.mean(axis=0), color=colors[n], marker=".", ms=3, lw=1,
                        label=f"N={n}" + (" (dense)" if n == 1 else "") + (f", {seeds} seeds" if seeds > 1 else
                                                                            f", seed {next(iter(spectra[n]))}"))
            if seeds > 1:
                ax.fill_between(index, normalized.min(axis=0), normalized.max(axis=0), color=colors[n], alpha=0.2,
                                lw=0)
        ax.set_title(f"module {layer}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("index", fontsize=8)
        ax.set_ylabel(r"$\sigma / \sigma_{\max}$", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    if lowest < 0.1:
        # Decades carry labels; the minor ones (2×10⁻¹ ...) would crowd. Under a decade they are the only ones.
        fig.axes[0].yaxis.set_minor_formatter(NullFormatter())
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


def train_time_figure(times: pd.DataFrame, ratios: pd.DataFrame, title: str) -> Figure:
    """Training time in seconds per N (dense included) and LoRITa's over the dense model's of the same seed, mean ±
    std over seeds, side by side."""
    fig = _figure(9.0, 3.8)
    seconds, relative = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax, frame, value, unit in ((seconds, times, "seconds", " s"), (relative, ratios, "ratio", "×")):
        stats = collect.seed_stats(frame, ["factors"], [value]).sort_values("factors")
        names = [f"N={n}" + (" (dense)" if n == 1 else "") for n in stats["factors"]]
        means, stds = stats[f"{value}_mean"].to_numpy(), stats[f"{value}_std"].fillna(0).to_numpy()
        colors = _factor_colors(list(stats["factors"]))
        ax.bar(names, means, yerr=stds, capsize=4, color=[colors[n] for n in stats["factors"]])
        for i, (mean, std, n) in enumerate(zip(means, stds, stats["n"], strict=True)):
            text = f"{mean:.2f}{unit}" if unit == "×" else f"{mean:.1f}{unit}"
            ax.annotate(f"{text} ({n} seed{'s' * (n > 1)})", (i, mean + std), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=8)
        # Headroom for the value labels above the error bars.
        ax.set_ylim(0, 1.18 * max(1.0 if unit == "×" else 0.0, float((means + stds).max()) if len(means) else 1.0))
    relative.axhline(1.0, color="black", ls=":", lw=1.2, label="dense")
    relative.legend(fontsize=8)
    seconds.set_ylabel("training time (s)")
    relative.set_ylabel("training time / dense training time")
    fig.suptitle(title, fontsize=10)
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
