"""The report entry point: tracking store -> figures (PNG, PDF), LaTeX tables, report.md and report.html."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from benchmarks import tracking
from benchmarks.tracking import schema
from reports import collect, figures, tables, tuning
from reports.document import Block, Bullets, Heading, Image, Paragraph, Table, html_page, markdown

TITLE = "LoRITa benchmark report"
ENV_NAMES = {schema.TAG_TORCH_VERSION: "torch", schema.TAG_GIT_COMMIT: "git commit", schema.TAG_CPU_MODEL: "CPU",
             schema.TAG_GPU_NAME: "GPU"}
MAX_ERROR_CHARS = 300


@dataclass
class ReportSummary:
    """What build_report wrote."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    runs: int = 0
    failed: int = 0
    missing: list[collect.ArtifactGone] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"report {self.html} (and {self.markdown.name}): {len(self.figures)} figure files, "
                f"{len(self.tables)} LaTeX files from {self.runs} finished runs; {self.failed} runs did not finish")
        # One line per run, so a user sees which runs to look at without opening the report.
        return "\n".join([text, *(f"left out of a figure: {gone} (its artifact is gone)" for gone in self.missing)])


@dataclass
class _Output:
    """Where figures and tables go, and every file written so far."""

    figure_dir: Path
    table_dir: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    # Runs whose artifacts a figure needed and the store no longer has: listed in the report, not fatal to it.
    missing: list[collect.ArtifactGone] = field(default_factory=list)

    def figure(self, fig: Figure, stem: str, caption: str) -> Image:
        self.figures += figures.save(fig, self.figure_dir / stem)
        return Image(self.figure_dir / f"{stem}.png", caption)

    def table(self, grid: tables.Grid, stem: str) -> Paragraph:
        fragment = tables.latex_fragment(grid, f"tab:{stem}")
        paths = [self.table_dir / f"{stem}.tex", self.table_dir / f"{stem}_standalone.tex"]
        paths[0].write_text(fragment, encoding="utf-8")
        paths[1].write_text(tables.latex_document(fragment), encoding="utf-8")
        self.tables += paths
        return Paragraph(f"LaTeX: tables/{paths[0].name} (fragment, needs booktabs), tables/{paths[1].name} "
                         "(compilable document).")


def slug(text: str) -> str:
    """File-name-safe form: 'fcn (layers=3, width=64)' -> 'fcn-layers3-width64'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("=", "")).strip("-")


def _seeds(runs: pd.DataFrame) -> str:
    return ", ".join(str(s) for s in sorted(runs["seed"].unique()))


def _software(runs: pd.DataFrame) -> list[str]:
    items = []
    for tag, name in ENV_NAMES.items():
        counts = runs[tag].fillna("none (CPU only)" if tag == schema.TAG_GPU_NAME else "not recorded").value_counts()
        # One value is the common case; several (runs from different machines or commits) get their counts.
        values = [f"{value} ({count} runs)" if len(counts) > 1 else value for value, count in counts.items()]
        items.append(f"{name}: {', '.join(values)}")
    return items


def _comparison(first: pd.Series) -> tuple[str, str]:
    """(name, file stem) of the comparison (model, dataset, budget hash) a row belongs to."""
    return (f"{first['model_label']} on {first['dataset']}, budget {first['budget_hash']}",
            f"{slug(first['model_label'])}__{slug(first['dataset'])}__{first['budget_hash']}")


def _group_blocks(runs: pd.DataFrame, out: _Output) -> list[Block]:
    first = runs.iloc[0]
    name, stem = _comparison(first)
    seeds = _seeds(runs)
    compressed = runs[runs["target"].notna()]
    targets = ", ".join(tables.target_title(m, t) for m, t in
                        sorted(compressed.groupby(["target_metric", "target"]).groups))
    blocks: list[Block] = [
        Heading(2, name),
        Paragraph(f"{len(runs)} finished runs on dataset {first['dataset']}, seeds {seeds}; methods: "
                  f"{', '.join(collect.ordered_labels(runs))}; targets: {targets or 'none'}."),
        Bullets(_software(runs)),
    ]
    if first["tuned"]:
        blocks.append(Paragraph("Tuned comparison: each method ran with the values its own study selected on "
                                "validation data (see Tuning); these numbers are on the test split."))
    if not compressed.empty:
        for drop, kind in ((schema.FLOPS_DROP, "flops"), (schema.PARAMS_DROP, "params")):
            what = figures.DROP_NAMES[drop]
            fig = figures.tradeoff_figure(runs, drop, f"{name}\naccuracy vs achieved {what} drop")
            blocks += [Heading(3, f"Accuracy vs achieved {what} drop"), out.figure(
                fig, f"acc_vs_{kind}__{stem}", f"{name}: test accuracy after fine-tuning vs achieved {what} drop, "
                f"mean ± std over seeds {seeds}; circled points are Pareto-optimal; dotted line: dense.")]
        caption = (f"{name}: mean ± sample std over seeds {seeds}. Base acc.: the dense model of the same budget and "
                   "seed; Acc.: after compression and fine-tuning; Δ: their difference; drops are achieved values. "
                   "Best per column in bold.")
        grid = tables.result_grid(runs, caption)
        blocks += [Heading(3, "Results"), Table(grid), out.table(grid, f"results__{stem}")]
    blocks += _trained_model_blocks(runs, name, stem, out)
    grid = tables.budget_grid(runs, f"The budget behind every run of {name}.")
    return blocks + [Heading(3, "Budget"), Table(grid), out.table(grid, f"budget__{stem}")]


def _trained_model_blocks(runs: pd.DataFrame, name: str, stem: str, out: _Output) -> list[Block]:
    """Spectra, accuracy vs singular values kept, training time: properties of the trained models."""
    blocks: list[Block] = []
    spectra, missing = collect.load_spectra(runs)
    out.missing += missing
    if spectra:
        blocks += [Heading(3, "Singular-value spectra of the trained models"), out.figure(
            figures.spectra_figure(spectra, f"{name}\nnormalized singular values per layer"), f"spectra__{stem}",
            f"{name}: singular values of each trained (collapsed) layer over the largest, log scale, per N; "
            "LoRITa's composition should make them fall faster.")]
    curves = collect.load_keep_curves(runs)
    if not curves.empty:
        blocks += [Heading(3, "Accuracy vs singular values kept"), out.figure(
            figures.keep_figure(curves, f"{name}\naccuracy vs fraction of singular values kept"),
            f"acc_vs_keep__{stem}", f"{name}: test accuracy after keeping a fraction of every layer's singular "
            f"values (classifier excluded), no fine-tuning; mean ± std over seeds.")]
    ratios = collect.train_time_ratios(runs)
    if not ratios.empty:
        blocks += [Heading(3, "Training time"), out.figure(
            figures.train_time_figure(ratios, f"{name}\nLoRITa training time relative to dense"),
            f"train_time__{stem}", f"{name}: train_time_s of LoRITa over the dense model's of the same seed, "
            "mean ± std over seeds. train_time_s is the recorded wall time of training: it includes per-epoch "
            "logging and, for the first model a process trains, one-off start-up costs, so only runs long enough "
            "to dwarf those compare training cost.")]
    return blocks


def _imported_blocks(imported: pd.DataFrame, out: _Output) -> list[Block]:
    """The runs on imported checkpoints (lorita-bench import-authors), a section per checkpoint and budget."""
    if imported.empty:
        return []
    blocks: list[Block] = [Heading(2, "Authors' released checkpoints"), Paragraph(
        "Trained models imported, not trained here: checkpoints the LoRITa authors released, loaded exactly into "
        "the suite's composed networks (lorita-bench import-authors), compressed by the suite's rank planning (a "
        "label per rank policy) and fine-tuned for the budget's fine-tuning epochs. Their training followed the "
        "authors' recipe, not a budget of this suite, so no comparison above holds them.")]
    for _, runs in imported.groupby(collect.IMPORTED_GROUP, sort=True):
        first = runs.iloc[0]
        checkpoint = first["trained_from"][:12]
        name = (f"{first['model_label']} N={first['factors']} on {first['dataset']}, checkpoint {checkpoint}, "
                f"budget {first['budget_hash']}")
        stem = f"imported__{slug(first['model_label'])}__{slug(first['dataset'])}__{checkpoint}__{first['budget_hash']}"
        seeds = _seeds(runs)
        grid = tables.imported_grid(runs, f"{name}: test accuracy of the imported model, after compression and after "
                                          f"fine-tuning, and the achieved drops; mean ± sample std over seeds {seeds}.")
        blocks += [Heading(3, name), Paragraph(
            f"{len(runs)} finished runs of checkpoint SHA-256 {first['trained_from']}, seeds {seeds}, "
            f"{first['budget.finetune_epochs']} fine-tuning epochs."), out.figure(
            figures.imported_figure(runs, f"{name}\naccuracy vs achieved FLOPs drop"), stem,
            f"{name}: test accuracy vs achieved FLOPs drop before (dashed) and after (solid) fine-tuning, mean ± std "
            f"over seeds {seeds}; dotted line: the imported model."), Table(grid), out.table(grid, stem)]
    return blocks


def _ablation_blocks(done: pd.DataFrame, out: _Output) -> list[Block]:
    blocks: list[Block] = []
    for runs in collect.weight_decay_ablations(done):
        first = runs.iloc[0]
        name = f"{first['model_label']} on {first['dataset']}"
        fig = figures.ablation_figure(runs, "weight_decay", "weight decay", f"{name}\naccuracy vs weight decay",
                                      log_x=True)
        stem = f"ablation_weight_decay__{slug(first['model_label'])}__{slug(first['dataset'])}__{first['budget_rest']}"
        blocks += [Heading(3, f"Weight decay: {name}"), out.figure(
            fig, stem, f"{name}: accuracy after fine-tuning vs weight decay; budgets otherwise identical "
            f"({', '.join(sorted(runs['budget_hash'].unique()))}); mean ± std over seeds {_seeds(runs)}.")]
    for runs in collect.depth_ablations(done):
        first = runs.iloc[0]
        rest = {k: v for k, v in json.loads(first["rest"]).items() if k != "layers"}
        name = f"{collect.model_label(first['model'], rest)} on {first['dataset']}, budget {first['budget_hash']}"
        stem = (f"ablation_depth__{slug(collect.model_label(first['model'], rest))}__{slug(first['dataset'])}__"
                f"{first['budget_hash']}")
        fig = figures.ablation_figure(runs, "layers", "depth (layers)", f"{name}\naccuracy vs depth", log_x=False)
        blocks += [Heading(3, f"Depth: {name}"), out.figure(
            fig, stem, f"{name}: accuracy after fine-tuning vs number of layers; mean ± std over seeds "
            f"{_seeds(runs)}.")]
    return [Heading(2, "Ablations"), *blocks] if blocks else []


def _selected_caption(studies: pd.DataFrame) -> str:
    caption = ("A study per method, each given the same number of trials and run on training data less a "
               "validation split; its selection is the trial with the highest validation objective (validation "
               "accuracy after fine-tuning, averaged over the comparison's targets unless the tuning named one; "
               "the uncompressed reference: its trained model's), as the tuner recorded it in selected.json.")
    derived = int((studies["source"] == tuning.FROM_TRIALS).sum())
    if derived:
        caption += (f" {derived} studies' selected.json is missing: their selection is their best finished trial "
                    "run's.")
    lost = int(studies["not_finished"].sum())
    if lost:
        caption += (f" {lost} trial runs did not finish (failed or killed; a killed trial is retried with its "
                    "values) and are left out.")
    return caption


def _split_note(trials: pd.DataFrame) -> str:
    shares = sorted(pd.to_numeric(trials["budget.val_fraction"], errors="coerce").dropna().unique())
    share = f" ({', '.join(f'{100 * v:g} %' for v in shares)} of it, stratified)" if shares else ""
    return ("Tuning read only training and validation data: each trial trained on the training split less a "
            f"held-out validation split{share} and was scored on that split. The reported runs' numbers, in every "
            "comparison above, are on the test split.")


def _tuning_blocks(found: tuning.TuningRuns, out: _Output) -> list[Block]:
    """The Tuning section: the selected values per study, then per comparison its history and weight decays."""
    if found.trials.empty:
        return []
    grid = tables.selected_grid(found.studies, _selected_caption(found.studies))
    blocks: list[Block] = [Heading(2, "Tuning"), Paragraph(_split_note(found.trials)),
                           Heading(3, "Selected values per method"), Table(grid), out.table(grid, "tuning_selected")]
    history = tuning.best_so_far(found.trials)
    for _, studies in found.studies.groupby(collect.GROUP, sort=False):
        name, stem = _comparison(studies.iloc[0])
        trials = found.trials[found.trials["study"].isin(studies["study"])]
        blocks += [Heading(3, f"Optimisation history: {name}"), out.figure(
            figures.history_figure(history[history["study"].isin(studies["study"])], studies,
                                   f"{name}\nbest validation objective so far"), f"tuning_history__{stem}",
            f"{name}: the best validation objective reached up to each trial number, a line per method's study "
            "(faint points: each trial's own objective), so equal tuning budgets show as lines of equal length.")]
        blocks += [Heading(3, f"Objective against weight decay: {name}"), out.figure(
            figures.decay_figure(trials, studies, f"{name}\nvalidation objective vs weight decay"),
            f"tuning_weight_decay__{stem}",
            f"{name}: each finished trial's validation objective against the weight decay it trained with (log "
            "scale), a panel per method; hollow markers are trials that diverged (objective 0), the ringed one "
            "is the selected trial.")]
    return blocks


def _failure_blocks(failed: pd.DataFrame) -> list[Block]:
    if failed.empty:
        return [Heading(2, "Runs that did not finish"), Paragraph("None: every matching run finished.")]
    rows = [[str(r.run_name), str(r.experiment), r.status, r.label, r.model_label, r.dataset, str(r.seed),
             str(r.error or "")[:MAX_ERROR_CHARS]] for r in failed.itertuples()]
    grid = tables.Grid(f"{len(failed)} runs that did not finish (left out of every figure and table).",
                       ["Run", "Experiment", "Status", "Method", "Model", "Dataset", "Seed", "Error"],
                       [tables.Section(None, rows)])
    return [Heading(2, "Runs that did not finish"), Table(grid)]


def _missing_blocks(missing: list[collect.ArtifactGone]) -> list[Block]:
    if not missing:
        return []
    rows = [[str(gone.run_name), gone.run_id, gone.artifact] for gone in missing]
    grid = tables.Grid(f"{len(missing)} finished runs whose artifact the tracking store no longer has (its artifact "
                       "folder was deleted, or never arrived): left out of the figure that needs it, another seed "
                       "standing in where there is one; their recorded metrics still count in every table.",
                       ["Run", "Run id", "Missing artifact"], [tables.Section(None, rows)])
    return [Heading(2, "Runs with missing artifacts"), Table(grid)]


def _filters(experiment: str | None, model: str | None, dataset: str | None) -> str:
    given = [f"{key} {value!r}" for key, value in (("experiment", experiment), ("model", model),
                                                    ("dataset", dataset)) if value is not None]
    return f" ({', '.join(given)})" if given else ""


def build_report(out_dir: str | Path, *, experiment: str | None = None, model: str | None = None,
                 dataset: str | None = None) -> ReportSummary:
    """Figures, LaTeX tables, report.md and report.html in `out_dir`, from the tracking store alone."""
    where = _filters(experiment, model, dataset)
    runs = collect.load_runs(experiment, model, dataset)
    if runs.empty:
        raise ValueError(f"no benchmark runs{where} in the tracking store {tracking.tracking_uri()}: "
                         "record some with `lorita-bench run` first")
    done, superseded = collect.finished(runs)
    failed = collect.failures(runs)
    if done.empty:
        raise ValueError(f"no FINISHED runs{where} in the tracking store {tracking.tracking_uri()} "
                         f"({len(failed)} failed or killed, {len(runs) - len(failed)} still running)")
    folder = Path(out_dir)
    out = _Output(folder / "figures", folder / "tables")
    out.figure_dir.mkdir(parents=True, exist_ok=True)
    out.table_dir.mkdir(parents=True, exist_ok=True)
    imported = done[done["trained_from"].notna()]
    trained = done[done["trained_from"].isna()]
    groups = [part for _, part in trained.groupby(collect.GROUP, sort=True)]
    running = int((runs["status"] == schema.STATUS_RUNNING).sum())
    notes = [
        "Every number is the mean ± sample standard deviation over seeds of values recorded in the tracking "
        "store; nothing is retrained or recomputed from models.",
        "Accuracy is the top-1 test accuracy of the final-epoch model; FLOPs are fvcore multiply-adds at batch 1; "
        "drops are the achieved (measured) ones, not the targets.",
        "Runs are compared only within one model, dataset and budget hash; runs on imported checkpoints only "
        "among themselves.",
    ]
    if superseded:
        notes.append(f"{superseded} older runs repeating a newer run's measurement (same method, target and "
                     "seed) were left out; the newest is reported.")
    if running:
        notes.append(f"{running} runs still RUNNING were left out.")
    blocks: list[Block] = [
        Heading(1, TITLE),
        Paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from the tracking store "
                  f"{tracking.tracking_uri()}{where}: {len(done)} finished runs in {len(groups)} comparison(s), "
                  f"{len(failed)} run(s) that did not finish."),
        Bullets(notes),
    ]
    for part in groups:
        blocks += _group_blocks(part, out)
    blocks += _imported_blocks(imported, out)
    blocks += _ablation_blocks(trained, out) + _tuning_blocks(tuning.load_tuning(experiment, model, dataset), out)
    blocks += _failure_blocks(failed) + _missing_blocks(out.missing)
    summary = ReportSummary(folder / "report.md", folder / "report.html", out.figures, out.tables, len(done),
                            len(failed), out.missing)
    summary.markdown.write_text(markdown(blocks, folder), encoding="utf-8")
    summary.html.write_text(html_page(blocks, TITLE), encoding="utf-8")
    return summary
