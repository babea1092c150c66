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
from benchmarks.config import BUDGET_FIELDS
from benchmarks.tracking import schema
from reports import budget, collect, figures, latency, links, tables, tuning
from reports.document import Block, Bullets, Heading, Image, Paragraph, Runs, Table, html_page, markdown

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
    """Where figures and tables go, every file written so far, and where run links point."""

    figure_dir: Path
    table_dir: Path
    ui: str
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    # Runs whose artifacts a figure needed and the store no longer has: listed in the report, not fatal to it.
    missing: list[collect.ArtifactGone] = field(default_factory=list)

    def figure(self, fig: Figure, stem: str, caption: str, runs: pd.DataFrame) -> list[Block]:
        """The figure, and the runs drawn in it."""
        self.figures += figures.save(fig, self.figure_dir / stem)
        return [Image(self.figure_dir / f"{stem}.png", caption), self.runs(runs, "figure")]

    def table(self, grid: tables.Grid, stem: str, runs: pd.DataFrame) -> list[Block]:
        """The table in the report, its LaTeX files, and the runs behind it."""
        fragment = tables.latex_fragment(grid, f"tab:{stem}")
        paths = [self.table_dir / f"{stem}.tex", self.table_dir / f"{stem}_standalone.tex"]
        paths[0].write_text(fragment, encoding="utf-8")
        paths[1].write_text(tables.latex_document(fragment), encoding="utf-8")
        self.tables += paths
        packages = ", ".join(tables.LATEX_PACKAGES)
        return [Table(grid), Paragraph(f"LaTeX: tables/{paths[0].name} (fragment, needs {packages}), "
                                       f"tables/{paths[1].name} (compilable document)."), self.runs(runs, "table")]

    def runs(self, runs: pd.DataFrame, what: str) -> Runs:
        order = collect.label_order(runs)
        ordered = runs.assign(_order=runs["label"].map(order)).sort_values(
            ["_order", "target_metric", "target", "seed"], na_position="first", kind="stable")
        return Runs(what, links.run_links(ordered, self.ui))


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


def budget_names(runs: pd.DataFrame) -> dict[str, str]:
    """{budget hash: how captions tell it apart}: '' where one budget has its model and dataset alone, else the
    fields in which it differs from the others (and 'tuned' for a tuned comparison)."""
    names: dict[str, str] = {}
    for _, same in runs.groupby(["model_label", "dataset"], sort=False):
        budgets = same.drop_duplicates("budget_hash").set_index("budget_hash")
        fields = [name for name in BUDGET_FIELDS if budgets[f"budget.{name}"].astype(str).nunique() > 1]
        for budget_hash, row in budgets.iterrows():
            parts = ["tuned"] if row["tuned"] else []
            parts += [f"{budget.readable(name).lower()} {row[f'budget.{name}']}" for name in fields]
            if len(budgets) > 1 and not parts:
                parts = [f"budget {list(budgets.index).index(budget_hash) + 1} of {len(budgets)}"]
            names[str(budget_hash)] = ", ".join(parts) if len(budgets) > 1 or row["tuned"] else ""
    return names


def _comparison(first: pd.Series, budgets: dict[str, str]) -> tuple[str, str, str]:
    """(caption name, heading, file stem) of the comparison (model, dataset, budget) a row belongs to. Captions carry
    no hash: the budget table does."""
    which = budgets.get(str(first["budget_hash"]), "")
    name = f"{first['model_label']} on {first['dataset']}" + (f" ({which})" if which else "")
    return (name, f"{name}, budget {first['budget_hash']}",
            f"{slug(first['model_label'])}__{slug(first['dataset'])}__{first['budget_hash']}")


def _stats_note(runs: pd.DataFrame) -> str:
    """'mean ± sample std over 2 seeds (0, 1)', or 'seed 0 (one run each)'."""
    seeds = figures.seeds_text(runs["seed"])
    return f"mean ± sample std over {seeds}" if runs["seed"].nunique() > 1 else f"{seeds}, one run per point"


def _reference_note(runs: pd.DataFrame) -> str:
    reference = runs[runs["reference"].astype(bool)]
    return f" dotted line: {reference['label'].iloc[0]}." if not reference.empty else ""


def _na_note(runs: pd.DataFrame) -> str:
    na = runs[collect.not_applicable(runs)]
    return (f" Not drawn: {', '.join(collect.ordered_labels(na))} (not applicable to this model: see the table)."
            if not na.empty else "")


def _group_blocks(runs: pd.DataFrame, out: _Output, budgets: dict[str, str]) -> list[Block]:
    first = runs.iloc[0]
    name, heading, stem = _comparison(first, budgets)
    stats = _stats_note(runs)
    compressed = runs[runs["target"].notna()]
    targets = ", ".join(tables.target_title(m, t) for m, t in
                        sorted(compressed.groupby(["target_metric", "target"]).groups))
    blocks: list[Block] = [
        Heading(2, heading),
        Paragraph(f"{len(runs)} finished runs on dataset {first['dataset']}, seeds {_seeds(runs)}; methods: "
                  f"{', '.join(collect.ordered_labels(runs))}; targets: {targets or 'none'}."),
        Bullets(_software(runs)),
    ]
    if first["tuned"]:
        blocks.append(Paragraph("Tuned comparison: each method ran with the values its own study selected on "
                                "validation data (see Tuning); these numbers are on the test split."))
    drawn = figures.measured(compressed)
    if not compressed.empty:
        grid = tables.result_grid(runs, f"{name}: test accuracy before and after fine-tuning, FLOPs and parameters; "
                                        f"{stats}.")
        blocks += [Heading(3, "Results"), *out.table(grid, f"results__{stem}", runs)]
        if not drawn.empty:
            for drop, kind in ((schema.FLOPS_DROP, "flops"), (schema.PARAMS_DROP, "params")):
                what = figures.DROP_NAMES[drop]
                fig = figures.tradeoff_figure(runs, drop, f"{name}\naccuracy vs achieved {what} drop")
                blocks += [Heading(3, f"Accuracy vs achieved {what} drop"), *out.figure(
                    fig, f"acc_vs_{kind}__{stem}", f"{name}: test accuracy after fine-tuning vs achieved {what} "
                    f"drop, {stats} (bars clipped at 100 %); ringed points are Pareto-optimal, drops within "
                    f"{100 * figures.PARETO_TOLERANCE:g} pp counting as equal; methods at one target are drawn "
                    f"{figures.DODGE_PT:g} pt apart.{_reference_note(runs)}{_na_note(runs)}",
                    pd.concat([drawn, runs[runs["reference"].astype(bool)]]))]
        blocks += _latency_blocks(runs, name, stem, out)
    blocks += _trained_model_blocks(runs, name, stem, out)
    grid = budget.budget_grid(runs, f"The budget behind every run of {name}.")
    return blocks + [Heading(3, "Budget"), *out.table(grid, f"budget__{stem}", runs)]


def _latency_blocks(runs: pd.DataFrame, name: str, stem: str, out: _Output) -> list[Block]:
    """The latency table, accuracy against measured speed-up, and predicted against measured latency."""
    batches = latency.shown_batches(runs)
    shown = " and ".join(str(b) for b in batches)
    grid = tables.latency_grid(runs, f"{name}: latency and measured speed-up at batch {shown}; median over "
                                     f"{figures.seeds_text(runs['seed'])}.")
    if grid is None:
        return []
    blocks: list[Block] = [Heading(3, "Latency"), *out.table(grid, f"latency__{stem}", runs)]
    drawn = figures.measured(runs[runs["target"].notna()])
    if not drawn.empty:
        loaded = " Some latencies were measured under load (see the latency table)." if runs["under_load"].any() else ""
        blocks += [Heading(3, "Accuracy vs measured speed-up"), *out.figure(
            figures.speedup_figure(runs, batches, f"{name}\naccuracy vs measured speed-up"), f"acc_vs_speedup__{stem}",
            f"{name}: test accuracy after fine-tuning vs measured speed-up over the uncompressed model, a panel per "
            f"batch size: accuracy {_stats_note(runs)}, speed-up the median over seeds (log scale; bars from the "
            f"lowest to the highest seed); {tables.speedup_note(runs, batches)}.{loaded}"
            f"{_reference_note(runs)}{_na_note(runs)}", runs[~collect.not_applicable(runs)])]
    predicted = figures.has_predictions(runs, batches)
    if predicted:
        with_pred = runs[pd.concat([latency.column(runs, schema.latency_at("pred_ms", b)).notna()
                                    for b in predicted], axis=1).any(axis=1)]
        blocks += [Heading(3, "Predicted vs measured latency"), *out.figure(
            figures.prediction_figure(runs, predicted, f"{name}\npredicted vs measured latency"),
            f"latency_prediction__{stem}", f"{name}: the latency table's predicted end-to-end latency against the "
            "measured median, each run a point, log scales; the band is ±15 %; hollow markers were measured under "
            "load.", with_pred)]
    return blocks


def _trained_model_blocks(runs: pd.DataFrame, name: str, stem: str, out: _Output) -> list[Block]:
    """Spectra, accuracy vs singular values kept, training time: properties of the trained models."""
    blocks: list[Block] = []
    models = collect.trained_models(runs)
    spectra, missing = collect.load_spectra(runs)
    out.missing += missing
    if spectra:
        first = next(iter(next(iter(spectra.values())).values()))
        layers = collect.compressed_layers(runs, list(first))
        drawn = [f"N={n}: {figures.seeds_text(seeds)}" for n, seeds in sorted(spectra.items())]
        if layers:
            shown = figures.MAX_SPECTRA_PANELS if len(layers) > figures.MAX_SPECTRA_PANELS else len(layers)
            blocks += [Heading(3, "Singular-value spectra of the trained models"), *out.figure(
                figures.spectra_figure(spectra, layers, f"{name}\nnormalized singular values per layer"),
                f"spectra__{stem}", f"{name}: singular values of each trained (collapsed) layer that compression may "
                f"truncate ({shown} of {len(layers)} shown; the classifier and other excluded layers left out) over "
                "its largest, log scale, one y-range; a line per N, the mean over seeds, the band from the lowest "
                f"to the highest seed ({'; '.join(drawn)}). LoRITa's composition should make them fall faster.",
                models[models["run_id"].isin(_spectra_runs(models, spectra))])]
    curves = collect.load_keep_curves(runs)
    if not curves.empty:
        blocks += [Heading(3, "Accuracy vs singular values kept"), *out.figure(
            figures.keep_figure(curves, f"{name}\naccuracy vs fraction of singular values kept"),
            f"acc_vs_keep__{stem}", f"{name}: test accuracy after keeping a fraction of every layer's singular "
            f"values (classifier excluded), no fine-tuning; {_stats_note(curves)}.", models)]
    times, ratios = collect.train_times(runs), collect.train_time_ratios(runs)
    if not ratios.empty:
        blocks += [Heading(3, "Training time"), *out.figure(
            figures.train_time_figure(times, ratios, f"{name}\ntraining time, absolute and relative to dense"),
            f"train_time__{stem}", f"{name}: train_time_s per N in seconds (left) and of LoRITa over the dense "
            f"model's of the same seed (right), {_stats_note(times)}. train_time_s is the recorded wall time of "
            "training: it includes per-epoch logging and, for the first model a process trains, one-off start-up "
            "costs, so only runs long enough to dwarf those compare training cost.", models)]
    return blocks


def _spectra_runs(models: pd.DataFrame, spectra: collect.Spectra) -> list[str]:
    """Run ids of the trained models whose spectra were drawn."""
    return [row.run_id for row in models.itertuples() if int(row.seed) in spectra.get(int(row.factors), {})]


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
        name = f"{first['model_label']} N={first['factors']} on {first['dataset']}, the authors' checkpoint"
        stem = f"imported__{slug(first['model_label'])}__{slug(first['dataset'])}__{checkpoint}__{first['budget_hash']}"
        stats = _stats_note(runs)
        grid = tables.result_grid(runs, f"{name}: test accuracy of the imported model, after compression and after "
                                        f"fine-tuning, FLOPs and parameters; {stats}.",
                                  reference=tables.imported_reference(runs))
        grid.notes.append(f"Checkpoint SHA-256: {first['trained_from']}; budget {first['budget_hash']}.")
        blocks += [Heading(3, f"{name} {checkpoint}, budget {first['budget_hash']}"), Paragraph(
            f"{len(runs)} finished runs of checkpoint SHA-256 {first['trained_from']}, seeds {_seeds(runs)}, "
            f"{first['budget.finetune_epochs']} fine-tuning epochs."), *out.figure(
            figures.imported_figure(runs, f"{name}\naccuracy vs achieved FLOPs drop"), stem,
            f"{name}: test accuracy vs achieved FLOPs drop before (dashed) and after (solid) fine-tuning, {stats}; "
            "dotted line: the imported model.", runs), *out.table(grid, stem, runs)]
    return blocks


def _ablation_blocks(done: pd.DataFrame, out: _Output) -> list[Block]:
    blocks: list[Block] = []
    for runs in collect.weight_decay_ablations(done):
        first = runs.iloc[0]
        name = f"{first['model_label']} on {first['dataset']}"
        fig = figures.ablation_figure(runs, "weight_decay", "weight decay", f"{name}\naccuracy vs weight decay",
                                      log_x=True)
        stem = f"ablation_weight_decay__{slug(first['model_label'])}__{slug(first['dataset'])}__{first['budget_rest']}"
        blocks += [Heading(3, f"Weight decay: {name}"), *out.figure(
            fig, stem, f"{name}: accuracy after fine-tuning vs weight decay, budgets otherwise identical; "
            f"{_stats_note(runs)}.", runs)]
    for runs in collect.depth_ablations(done):
        first = runs.iloc[0]
        rest = {k: v for k, v in json.loads(first["rest"]).items() if k != "layers"}
        name = f"{collect.model_label(first['model'], rest)} on {first['dataset']}"
        stem = (f"ablation_depth__{slug(collect.model_label(first['model'], rest))}__{slug(first['dataset'])}__"
                f"{first['budget_hash']}")
        fig = figures.ablation_figure(runs, "layers", "depth (layers)", f"{name}\naccuracy vs depth", log_x=False)
        blocks += [Heading(3, f"Depth: {name}, budget {first['budget_hash']}"), *out.figure(
            fig, stem, f"{name}: accuracy after fine-tuning vs number of layers; {_stats_note(runs)}.", runs)]
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
                           Heading(3, "Selected values per method"), *out.table(grid, "tuning_selected", found.trials)]
    history = tuning.best_so_far(found.trials)
    budgets = budget_names(found.trials)
    for _, studies in found.studies.groupby(collect.GROUP, sort=False):
        name, _, stem = _comparison(studies.iloc[0], budgets)
        trials = found.trials[found.trials["study"].isin(studies["study"])]
        blocks += [Heading(3, f"Optimisation history: {name}"), *out.figure(
            figures.history_figure(history[history["study"].isin(studies["study"])], studies,
                                   f"{name}\nbest validation objective so far"), f"tuning_history__{stem}",
            f"{name}: the best validation objective reached up to each trial number, a line per method's study "
            "(faint points: each trial's own objective), so equal tuning budgets show as lines of equal length.",
            trials)]
        blocks += [Heading(3, f"Objective against weight decay: {name}"), *out.figure(
            figures.decay_figure(trials, studies, f"{name}\nvalidation objective vs weight decay"),
            f"tuning_weight_decay__{stem}",
            f"{name}: each finished trial's validation objective against the weight decay it trained with (log "
            "scale), a panel per method; hollow markers are trials that diverged (objective 0), the ringed one "
            "is the selected trial.", trials)]
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
                 dataset: str | None = None, ui_url: str | None = None) -> ReportSummary:
    """Figures, LaTeX tables, report.md and report.html in `out_dir`, from the tracking store alone; runs linked to
    the MLflow UI at `ui_url` (default: links.ui_base)."""
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
    out = _Output(folder / "figures", folder / "tables", links.ui_base(ui_url))
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
        f"Every table and figure lists the runs behind it, linked to the MLflow UI at {out.ui} (start it with "
        "`lorita-bench ui` on this store).",
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
    budgets = budget_names(trained)
    for part in groups:
        blocks += _group_blocks(part, out, budgets)
    blocks += _imported_blocks(imported, out)
    blocks += _ablation_blocks(trained, out) + _tuning_blocks(tuning.load_tuning(experiment, model, dataset), out)
    blocks += _failure_blocks(failed) + _missing_blocks(out.missing)
    summary = ReportSummary(folder / "report.md", folder / "report.html", out.figures, out.tables, len(done),
                            len(failed), out.missing)
    summary.markdown.write_text(markdown(blocks, folder), encoding="utf-8")
    summary.html.write_text(html_page(blocks, TITLE), encoding="utf-8")
    return summary
