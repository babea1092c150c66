"""Result and budget tables in the paper's shape, as a renderer-neutral grid and as LaTeX (booktabs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from benchmarks.tracking import schema
from reports import collect

# (stat column, header) of the result table after the method column; values are fractions, shown in percent.
RESULT_COLUMNS = (("base_acc", "Base acc. (%)"), ("acc", "Acc. (%)"), ("delta_acc", "Δ acc. (pp)"),
                  (schema.FLOPS_DROP, "FLOPs drop (%)"), (schema.PARAMS_DROP, "Params drop (%)"))
# The columns where a best value is marked, all "higher is better": accuracy, Δ (smallest loss), drops.
BOLD_COLUMNS = ("acc", "delta_acc", schema.FLOPS_DROP, schema.PARAMS_DROP)
DECIMALS = 1
TARGET_NAMES = {"flops_drop": "FLOPs drop", "params_drop": "Params drop"}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   # pdflatex has no glyphs for these in text mode.
                   "Δ": r"$\Delta$", "±": r"$\pm$", "·": r"$\cdot$", "–": "--", "—": "---"}


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


Cell = str | Stat


@dataclass
class Section:
    """Rows under an optional header row (e.g. 'FLOPs drop target 50 %')."""

    title: str | None
    rows: list[list[Cell]]


@dataclass
class Grid:
    """A table any renderer can write: caption, header, sections of rows."""

    caption: str
    header: list[str]
    sections: list[Section] = field(default_factory=list)


def target_title(metric: str, target: float) -> str:
    """FLOPs drop target 50 %."""
    return f"{TARGET_NAMES.get(metric, metric)} target {target * 100:.4g} %"


def result_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per target and method: mean/std over seeds (in %) of every result column; one comparison only."""
    collect.check_one_comparison(runs)
    based = collect.with_base(runs).rename(columns={schema.ACC_FINETUNED: "acc"})
    compressed = based[based["target"].notna()]
    if compressed.empty:
        raise ValueError("no compressed runs (only dense) in this comparison: nothing to tabulate")
    values = [name for name, _ in RESULT_COLUMNS]
    stats = collect.seed_stats(compressed, ["target_metric", "target", "label"], values)
    for name in values:
        stats[[f"{name}_mean", f"{name}_std"]] *= 100
    stats["order"] = stats["label"].map(collect.label_order(compressed))
    return stats.sort_values(["target_metric", "target", "order"], ignore_index=True).drop(columns="order")


def _bold_mask(block: pd.DataFrame, name: str) -> pd.Series:
    # Best as displayed: two means that print the same are both best. One row has nothing to beat.
    shown = block[f"{name}_mean"].round(DECIMALS)
    if len(block) < 2 or shown.isna().all():
        return pd.Series(False, index=block.index)
    return shown == shown.max()


def result_grid(runs: pd.DataFrame, caption: str) -> Grid:
    """The paper's table: a block per requested target, mean ± std over seeds, best per column in bold."""
    stats = result_stats(runs)
    grid = Grid(caption, ["Method", *(header for _, header in RESULT_COLUMNS)])
    for (metric, target), block in stats.groupby(["target_metric", "target"], sort=False):
        bold = {name: _bold_mask(block, name) for name in BOLD_COLUMNS}
        rows: list[list[Cell]] = [
            [row["label"], *(Stat(row[f"{name}_mean"], row[f"{name}_std"], bool(name in bold and bold[name][i]))
                             for name, _ in RESULT_COLUMNS)]
            for i, row in block.iterrows()]
        grid.sections.append(Section(target_title(metric, target), rows))
    return grid


# (metric, header) of an imported checkpoint's table: its own accuracy, then before and after fine-tuning.
IMPORTED_COLUMNS = ((schema.ACC_TRAINED, "Imported acc. (%)"), (schema.ACC_COMPRESSED, "Compressed acc. (%)"),
                    (schema.ACC_FINETUNED, "Fine-tuned acc. (%)"), (schema.FLOPS_DROP, "FLOPs drop (%)"),
                    (schema.PARAMS_DROP, "Params drop (%)"))


def imported_grid(runs: pd.DataFrame, caption: str) -> Grid:
    """The runs on one imported checkpoint: a block per target, a row per method label (rank policy), mean ± std
    over seeds of the accuracy before and after fine-tuning and of the achieved drops."""
    values = [name for name, _ in IMPORTED_COLUMNS]
    stats = collect.seed_stats(runs, ["target_metric", "target", "label"], values)
    stats["order"] = stats["label"].map(collect.label_order(runs))
    grid = Grid(caption, ["Method", *(header for _, header in IMPORTED_COLUMNS)])
    for (metric, target), block in stats.sort_values(["target_metric", "target", "order"]).groupby(
            ["target_metric", "target"], sort=False):
        rows: list[list[Cell]] = [[row["label"], *(Stat(100 * row[f"{name}_mean"], 100 * row[f"{name}_std"])
                                                   for name in values)] for _, row in block.iterrows()]
        grid.sections.append(Section(target_title(metric, target), rows))
    return grid


def budget_grid(runs: pd.DataFrame, caption: str) -> Grid:
    """Every Budget field of the one budget behind a comparison's rows."""
    collect.check_one_comparison(runs)
    rows: list[list[Cell]] = []
    for name in collect.BUDGET_FIELDS:
        values = runs[f"budget.{name}"].astype(str).unique()
        # Runs of one budget hash differ in a field only in a tuned comparison: there each study selected it.
        rows.append([name, values[0] if len(values) == 1 else "per method, selected by tuning (see Tuning)"])
    return Grid(caption, ["Budget field", "Value"], [Section(None, rows)])


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


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (method names carry underscores)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _latex_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return latex_escape(cell)
    if math.isnan(cell.mean):
        return "---"
    body = f"{cell.mean:.{DECIMALS}f}" + ("" if math.isnan(cell.std) else rf" \pm {cell.std:.{DECIMALS}f}")
    return rf"$\mathbf{{{body}}}$" if cell.bold else f"${body}$"


def latex_fragment(grid: Grid, label: str) -> str:
    """The table as a LaTeX table float (needs \\usepackage{booktabs})."""
    width = len(grid.header)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(grid.caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{l{'r' * (width - 1)}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in grid.header) + r" \\"]
    for section in grid.sections:
        lines.append(r"\midrule")
        if section.title is not None:
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(section.title)}}}}} \\")
        lines += [" & ".join(_latex_cell(cell) for cell in row) + r" \\" for row in section.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(fragment: str) -> str:
    """A compilable document holding one table fragment."""
    return "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}", r"\pagestyle{empty}",
                      r"\begin{document}", fragment.rstrip("\n"), r"\end{document}"]) + "\n"
