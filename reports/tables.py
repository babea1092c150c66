"""Result and latency tables in the paper's shape, as a renderer-neutral grid and as LaTeX (booktabs).

A comparison's result table holds the uncompressed reference's row first, then a block per target: a row per method
with its accuracy before and after fine-tuning, FLOPs and parameters (count and achieved drop). Its latency table holds
the same rows with the latency at batch 1 and at the configured batch, and the measured speed-up. A method that cannot
compress the model (tag not_applicable) has a row saying n/a and why, never a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks.tracking import schema
from reports import collect, latency

DECIMALS = 1
TARGET_NAMES = {"flops_drop": "FLOPs drop", "params_drop": "Params drop", "latency_drop": "Latency drop"}
# Values above which a cell says the count in thousands, millions, billions.
_SI = ((1e9, "G"), (1e6, "M"), (1e3, "K"))
UNDER_LOAD_MARK = "†"
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   # pdflatex has no glyphs for these in text mode.
                   "Δ": r"$\Delta$", "±": r"$\pm$", "·": r"$\cdot$", "–": "--", "—": "---", "×": r"$\times$",
                   "†": r"$^\dagger$"}
BOLD_RULE = ("Bold: the best mean accuracy after fine-tuning in each target's block, and every method whose mean is "
             "within one standard deviation (the best method's, over seeds) of it.")


@dataclass(frozen=True)
class Stat:
    """Mean and sample std over seeds of one percentage cell (std NaN with one seed)."""

    mean: float
    std: float
    bold: bool = False

    def text(self) -> str:
        """93.3 ± 0.4, or 93.3 with one seed, or — when there is no value."""
        if math.isnan(self.mean):
            return "—"
        return f"{self.mean:.{DECIMALS}f}" + ("" if math.isnan(self.std) else f" ± {self.std:.{DECIMALS}f}")


@dataclass(frozen=True)
class NotApplicable:
    """The rest of a row of a method that cannot compress the model: n/a and the number of the note saying why."""

    note: int

    def text(self) -> str:
        return f"n/a [{self.note}]"


Cell = str | Stat | NotApplicable


@dataclass
class Section:
    """Rows under an optional header row (e.g. 'FLOPs drop target 50 %')."""

    title: str | None
    rows: list[list[Cell]]


@dataclass
class Grid:
    """A table any renderer can write: caption, header (with optional spanning groups above it), sections of rows
    and notes under it. groups: (title, columns spanned) left to right after the first column."""

    caption: str
    header: list[str]
    sections: list[Section] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def flat_header(self) -> list[str]:
        """The header with each group's title joined to its columns' (for renderers without spanning cells)."""
        titles = [""]
        for title, span in self.groups:
            titles += [title] * span
        titles += [""] * (len(self.header) - len(titles))
        return [f"{group} {name}".strip() if group else name for group, name in zip(titles, self.header, strict=True)]


def target_title(metric: str, target: float) -> str:
    """FLOPs drop target 50 %."""
    return f"{TARGET_NAMES.get(metric, metric)} target {target * 100:.4g} %"


def count_text(value: float) -> str:
    """A FLOPs or parameter count as a paper writes it: 412K, 1.23M, 34.6G."""
    if math.isnan(value):
        return "—"
    for scale, unit in _SI:
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _pct_text(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.{DECIMALS}f}"


def _reasons(runs: pd.DataFrame) -> dict[str, int]:
    """{reason: note number} of the not-applicable runs' reasons, numbered from 1 in report order."""
    found = runs[collect.not_applicable(runs)]
    order = collect.label_order(found)
    ranked = found.assign(_order=found["label"].map(order)).sort_values(["_order", "target"], kind="stable")
    return {reason: i + 1 for i, reason in enumerate(dict.fromkeys(ranked["not_applicable"]))}


def _reason_notes(numbers: dict[str, int], runs: pd.DataFrame) -> list[str]:
    """The notes "[k] label: not applicable: reason"."""
    found = runs[collect.not_applicable(runs)]
    labels = {reason: ", ".join(collect.ordered_labels(found[found["not_applicable"] == reason])) for reason in numbers}
    return [f"[{k}] {labels[reason]}: not applicable: {reason}" for reason, k in numbers.items()]


def _rows(block: pd.DataFrame, numbers: dict[str, int]) -> list[tuple[str, pd.DataFrame | NotApplicable]]:
    """(label, its measured runs) per method of a target's block, or (label, NotApplicable) where none of its runs
    could compress the model (a run that did keeps its numbers; the others are left out)."""
    out: list[tuple[str, pd.DataFrame | NotApplicable]] = []
    for label, part in _by_label(block):
        na = collect.not_applicable(part)
        out.append((label, NotApplicable(numbers[part["not_applicable"].iloc[0]]) if na.all() else part[~na]))
    return out


def _blocks(runs: pd.DataFrame) -> list[tuple[tuple[str, float], pd.DataFrame]]:
    """((target metric, target), runs) per requested target, in order; one comparison only."""
    collect.check_one_comparison(runs)
    compressed = runs[runs["target"].notna()]
    if compressed.empty:
        raise ValueError("no compressed runs (only dense) in this comparison: nothing to tabulate")
    return [(key, part) for key, part in compressed.groupby(["target_metric", "target"], sort=True)]


def _by_label(block: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    order = collect.label_order(block)
    return sorted(block.groupby("label", sort=False), key=lambda item: order[item[0]])


def _bold(stats: dict[str, tuple[float, float]]) -> set[str]:
    """Labels whose mean accuracy is within the best one's std of the best (the best alone, or equal as shown, when
    the best has one seed); none when a block has one row."""
    means = {label: mean for label, (mean, _) in stats.items() if not math.isnan(mean)}
    if len(stats) < 2 or not means:
        return set()
    best = max(means, key=means.__getitem__)
    std = stats[best][1]
    if math.isnan(std):
        shown = round(means[best], DECIMALS)
        return {label for label, mean in means.items() if round(mean, DECIMALS) == shown}
    return {label for label, mean in means.items() if mean >= means[best] - std}


def _pct_stat(values: pd.Series, bold: bool = False) -> Stat:
    values = values.dropna()
    return Stat(100 * values.mean() if len(values) else math.nan, 100 * values.std() if len(values) > 1 else math.nan,
                bold)


def _reference_row(runs: pd.DataFrame) -> list[Cell] | None:
    reference = runs[runs["reference"].astype(bool)]
    if reference.empty:
        return None
    acc = _pct_stat(reference[schema.ACC_TRAINED])
    return [reference["label"].iloc[0], acc, acc, count_text(reference[schema.FLOPS].mean()), "—",
            count_text(reference[schema.PARAMS].mean()), "—"]


def _method_row(label: str, part: pd.DataFrame, bold: bool) -> list[Cell]:
    return [label, _pct_stat(part[schema.ACC_COMPRESSED]), _pct_stat(part[schema.ACC_FINETUNED], bold),
            count_text(part[schema.FLOPS].mean()), _pct_text(part[schema.FLOPS_DROP].mean()),
            count_text(part[schema.PARAMS].mean()), _pct_text(part[schema.PARAMS_DROP].mean())]


RESULT_HEADER = ["Method", "before FT", "after FT", "count", "drop", "count", "drop"]
RESULT_GROUPS = [("Accuracy (%)", 2), ("FLOPs", 2), ("Parameters", 2)]


def result_grid(runs: pd.DataFrame, caption: str, reference: list[Cell] | None = None) -> Grid:
    """The paper's table: the reference row, then a block per target; mean ± std over seeds; bold: BOLD_RULE.

    reference: the first row when the comparison's reference is not among `runs` (an imported model)."""
    grid = Grid(caption, list(RESULT_HEADER), groups=list(RESULT_GROUPS))
    first = reference or _reference_row(runs)
    if first is not None:
        grid.sections.append(Section(None, [first]))
    numbers = _reasons(runs)
    for (metric, target), block in _blocks(runs):
        rows = _rows(block, numbers)
        bold = _bold({label: (100 * part[schema.ACC_FINETUNED].mean(), 100 * part[schema.ACC_FINETUNED].std())
                      for label, part in rows if isinstance(part, pd.DataFrame)})
        grid.sections.append(Section(target_title(metric, target), [
            [label, part] if isinstance(part, NotApplicable) else _method_row(label, part, label in bold)
            for label, part in rows]))
    grid.notes = ["FT: fine-tuning. FLOPs: fvcore multiply-adds at batch 1; drops: achieved, in %. " + BOLD_RULE,
                  *_reason_notes(numbers, runs)]
    return grid


def _latency_cells(part: pd.DataFrame, batches: list[int]) -> list[Cell]:
    cells: list[Cell] = []
    for batch in batches:
        median = latency.column(part, schema.latency_at("ms", batch)).median()
        iqr = latency.column(part, schema.latency_at("iqr_ms", batch)).median()
        # The spread as a share of the median: narrower than a second latency, and what tells a noisy one.
        text = latency.ms_text(median) + ("" if math.isnan(iqr) or not median else f" ({100 * iqr / median:.0f}%)")
        loaded = part["under_load"].astype(bool).any() and not math.isnan(median)
        speedup = part[f"_speedup{batch}"].median()
        cells += [text + (UNDER_LOAD_MARK if loaded else ""), "—" if math.isnan(speedup) else f"{speedup:.2f}×"]
    return cells


def speedup_note(runs: pd.DataFrame, batches: list[int]) -> str:
    """How the speed-ups of `runs` at `batches` were obtained: measured side by side, or derived from the reference."""
    recorded = [b for b in batches if latency.has_recorded_speedup(runs, b)]
    if len(recorded) == len(batches):
        return "speed-up: the uncompressed model's latency measured beside the run's, over the run's"
    return ("speed-up: the uncompressed model's latency measured beside the run's over the run's where the run "
            "recorded it, else the reference run's latency (of the same seed, measured on its own) over the run's")


def latency_grid(runs: pd.DataFrame, caption: str) -> Grid | None:
    """Latency at batch 1 and the configured batch (median over seeds of each run's median, in brackets its
    interquartile range in % of the median where recorded) and speed-up over the reference; None when no run recorded
    latency."""
    batches = latency.shown_batches(runs)
    if not batches:
        return None
    # Derived over the whole comparison: a run's speed-up may need its seed's reference run.
    runs = runs.assign(**{f"_speedup{b}": latency.speedups(runs, b) for b in batches})
    grid = Grid(caption, ["Method", *(name for _ in batches for name in ("ms", "speed-up"))],
                groups=[(f"Batch {b}", 2) for b in batches])
    reference = runs[runs["reference"].astype(bool)]
    if not reference.empty:
        grid.sections.append(Section(None, [[reference["label"].iloc[0], *_latency_cells(reference, batches)]]))
    numbers = _reasons(runs)
    for (metric, target), block in _blocks(runs):
        grid.sections.append(Section(target_title(metric, target), [
            [label, part] if isinstance(part, NotApplicable) else [label, *_latency_cells(part, batches)]
            for label, part in _rows(block, numbers)]))
    grid.notes = [f"Latency on the CPU in ms, the median over seeds of each run's median forward (in brackets its "
                  "interquartile range in % of the median, where recorded); "
                  f"{speedup_note(runs, batches)}, median over seeds.",
                  *_reason_notes(numbers, runs)]
    if runs["under_load"].astype(bool).any():
        grid.notes.append(f"{UNDER_LOAD_MARK} measured while other processes used more than the set share of the "
                          "CPUs (tag latency_under_load): slower than on an idle machine.")
    return grid


def knob_text(value: object) -> str:
    """A searched knob's value as tables show it: 3 significant digits for a real number (0.0113, 4.6e-05)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def selected_grid(studies: pd.DataFrame, caption: str) -> Grid:
    """A row per tuning study: its searched knobs' selected values, best validation objective, trial, trial count."""
    knobs = list(dict.fromkeys(key for values in studies["values"] for key in values))
    rows: list[list[Cell]] = [
        [row.label, row.model_label, row.dataset, str(row.budget_hash),
         *(knob_text(row.values[key]) if key in row.values else "—" for key in knobs),
         Stat(100 * row.objective, math.nan).text(), "—" if pd.isna(row.trial) else str(row.trial), str(row.complete)]
        for row in studies.itertuples()]
    header = ["Method", "Model", "Dataset", "Budget", *knobs, "Val. objective (%)", "Trial", "Complete trials"]
    return Grid(caption, header, [Section(None, rows)])


def imported_reference(runs: pd.DataFrame) -> list[Cell]:
    """The first row of an imported checkpoint's table: the imported model itself, uncompressed."""
    acc = _pct_stat(runs.drop_duplicates("seed")[schema.ACC_TRAINED])
    return [f"imported model (N={int(runs['factors'].iloc[0])})", acc, acc,
            count_text(float(np.nanmean(runs[schema.FLOPS_BASE]))), "—",
            count_text(float(np.nanmean(runs[schema.PARAMS_BASE]))), "—"]


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (method names carry underscores)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _latex_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return latex_escape(cell)
    if isinstance(cell, NotApplicable):
        return latex_escape(cell.text())
    if math.isnan(cell.mean):
        return "---"
    body = f"{cell.mean:.{DECIMALS}f}" + ("" if math.isnan(cell.std) else rf" \pm {cell.std:.{DECIMALS}f}")
    return rf"$\mathbf{{{body}}}$" if cell.bold else f"${body}$"


def _latex_row(row: list[Cell], width: int) -> str:
    cells = [_latex_cell(cell) for cell in row]
    if row and isinstance(row[-1], NotApplicable):
        # n/a spans the numbers it stands for.
        cells[-1] = rf"\multicolumn{{{width - len(row) + 1}}}{{c}}{{{cells[-1]}}}"
    return " & ".join(cells) + r" \\"


def _latex_groups(grid: Grid) -> list[str]:
    if not grid.groups:
        return []
    cells, rules, column = [""], [], 2
    for title, span in grid.groups:
        cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(title)}}}")
        rules.append(rf"\cmidrule(lr){{{column}-{column + span - 1}}}")
        column += span
    return [" & ".join(cells) + r" \\", " ".join(rules)]


def latex_fragment(grid: Grid, label: str) -> str:
    """The table as a LaTeX table float (needs \\usepackage{booktabs,adjustbox}): \\small, at most \\columnwidth
    wide (adjustbox shrinks only a table that would be wider), its notes under it."""
    width = len(grid.header)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{latex_escape(grid.caption)}}}", rf"\label{{{label}}}",
             r"\begin{adjustbox}{max width=\columnwidth}", rf"\begin{{tabular}}{{l{'r' * (width - 1)}}}", r"\toprule",
             *_latex_groups(grid), " & ".join(latex_escape(h) for h in grid.header) + r" \\"]
    for section in grid.sections:
        lines.append(r"\midrule")
        if section.title is not None:
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(section.title)}}}}} \\")
        lines += [_latex_row(row, width) for row in section.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{adjustbox}"]
    if grid.notes:
        # A note may name a path: it may break after each slash.
        lines += [r"\par\smallskip{\footnotesize\raggedright",
                  *(latex_escape(note).replace("/", r"/\allowbreak{}") + r"\par" for note in grid.notes), "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


LATEX_PACKAGES = ("booktabs", "adjustbox")


def latex_document(fragment: str) -> str:
    """A compilable document holding one table fragment."""
    return "\n".join([r"\documentclass{article}", rf"\usepackage{{{','.join(LATEX_PACKAGES)}}}", r"\pagestyle{empty}",
                      r"\begin{document}", fragment.rstrip("\n"), r"\end{document}"]) + "\n"
