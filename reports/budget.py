"""The budget table: the budget behind a comparison, each field under a readable name, only the fields that apply."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from benchmarks.config import BUDGET_FIELDS
from reports import collect
from reports.tables import Cell, Grid, Section

NAMES = {"epochs": "Training epochs", "finetune_epochs": "Fine-tuning epochs", "optimizer": "Optimizer",
         "lr": "Learning rate", "momentum": "Momentum", "weight_decay": "Weight decay",
         "label_smoothing": "Label smoothing", "batch_size": "Batch size", "schedule": "LR schedule",
         "plateau_factor": "Plateau LR factor", "plateau_patience": "Plateau patience (epochs)",
         "finetune_lr": "Fine-tuning learning rate", "finetune_schedule": "Fine-tuning LR schedule",
         "augment": "Augmentation", "val_fraction": "Validation fraction"}
PER_METHOD = "per method, selected by tuning (see Tuning)"
Budget = Mapping[str, str]


def _plateau(budget: Budget) -> bool:
    uses = [budget.get("schedule")]
    if budget.get("finetune_epochs") != "0":
        uses.append(budget.get("finetune_schedule"))
    return "plateau" in uses


def _finetunes(budget: Budget) -> bool:
    return budget.get("finetune_epochs") != "0"


# When a field matters; a field not named here always does. Values are as recorded (params are strings).
APPLIES: dict[str, Callable[[Budget], bool]] = {
    "momentum": lambda budget: budget.get("optimizer") == "sgd",
    "plateau_factor": _plateau, "plateau_patience": _plateau,
    "finetune_lr": _finetunes, "finetune_schedule": _finetunes,
}


def readable(name: str) -> str:
    """A budget field's name as a table shows it."""
    return NAMES.get(name, name.replace("_", " ").capitalize())


def budget_grid(runs: pd.DataFrame, caption: str) -> Grid:
    """The one budget behind a comparison's rows: its hash, the data, and every budget field that applies."""
    collect.check_one_comparison(runs)
    values = {name: runs[f"budget.{name}"].astype(str).unique() for name in BUDGET_FIELDS}
    # Runs of one budget hash differ in a field only in a tuned comparison: there each study selected it.
    budget = {name: found[0] if len(found) == 1 else PER_METHOD for name, found in values.items()}
    first = runs.iloc[0]
    rows: list[list[Cell]] = [["Budget hash", str(first["budget_hash"])], ["Dataset", str(first["dataset"])]]
    rows += [[readable(name), value] for name, value in budget.items()
             if value == PER_METHOD or APPLIES.get(name, lambda _: True)(budget)]
    roots = sorted({str(root) for root in runs["data_root"].dropna()}) if "data_root" in runs else []
    notes = [f"Data root: {', '.join(roots)}."] if roots else []
    return Grid(caption, ["Budget field", "Value"], [Section(None, rows)], notes=notes)
