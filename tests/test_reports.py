"""The report from a tiny real tracking store: figures, LaTeX tables, Markdown and self-contained HTML."""

import json
import re
import shutil
import subprocess
import time
from collections import Counter

import pandas as pd
import pytest
from support import table_width

from benchmarks import tracking
from benchmarks.config import config_to_dict, make_config
from benchmarks.run.pipeline import execute
from benchmarks.tracking import schema
from reports import budget, collect, figures, links, tables
from reports.build import build_report

EXPERIMENT = "reports"
SEEDS = (0, 1)
TARGETS = (0.3, 0.5)
COMPRESSED = (("svd", {}), ("lorita", {"factors": 2}), ("l1", {}))


def _base(store) -> dict:
    # layers 3 x width 64: the smallest FCN whose rank and channel steps reach both targets within tolerance.
    return {"experiment": EXPERIMENT, "model": "fcn", "model_kwargs": {"layers": 3, "width": 64},
            "dataset": "digits", "cache_dir": str(store / "cache"), "device": "cpu",
            "budget": {"epochs": 2, "finetune_epochs": 1}}


@pytest.fixture(scope="module")
def recorded(store) -> pd.DataFrame:
    """14 finished runs (dense, svd, lorita N=2, l1 at two FLOPs targets, two seeds) and one failed run."""
    base = _base(store)
    _record(base)
    return tracking.search_runs(EXPERIMENT)


def _record(base: dict) -> None:
    for seed in SEEDS:
        execute(make_config({**base, "method": "dense", "seed": seed}), latency=False)
        for method, extra in COMPRESSED:
            for target in TARGETS:
                execute(make_config({**base, **extra, "method": method, "seed": seed, "target_metric": "flops_drop",
                                     "target": target}), latency=False)
    # A run that failed, as the pipeline records one.
    cfg = make_config({**base, "method": "dense", "seed": 9})
    run_id = tracking.start_run(EXPERIMENT, "failed", params=config_to_dict(cfg), tags={
        schema.TAG_METHOD: "dense", schema.TAG_MODEL: "fcn", schema.TAG_DATASET: "digits",
        schema.TAG_BUDGET_HASH: cfg.budget_hash(), schema.TAG_CONFIG_HASH: cfg.config_hash()})
    tracking.end_run(run_id, schema.STATUS_FAILED, error="fcn: unknown option 'depth'")


@pytest.fixture(scope="module")
def report(recorded, tmp_path_factory):
    """The report of the store, and how long building it took."""
    out = tmp_path_factory.mktemp("report")
    started = time.perf_counter()
    summary = build_report(out, experiment=EXPERIMENT)
    return summary, time.perf_counter() - started


@pytest.fixture(scope="module")
def done(recorded) -> pd.DataFrame:
    return collect.finished(collect.load_runs(EXPERIMENT))[0]


def test_report_is_fast(report, capsys):
    summary, seconds = report
    with capsys.disabled():
        print(f"\nbuild_report: {seconds:.1f} s for {summary.runs} finished runs")
    assert seconds < 30


def test_figures_and_tables_are_written(report):
    summary, _ = report
    pngs = {p.stem for p in summary.figures if p.suffix == ".png"}
    pdfs = {p.stem for p in summary.figures if p.suffix == ".pdf"}
    assert len(pngs) >= 4 and pngs == pdfs
    assert all(p.exists() and p.stat().st_size > 0 for p in summary.figures)
    kinds = {stem.split("__")[0] for stem in pngs}
    assert {"acc_vs_flops", "acc_vs_params", "spectra", "acc_vs_keep", "train_time"} <= kinds
    results = [p for p in summary.tables if p.name.startswith("results__") and p.name.endswith("_standalone.tex")]
    assert len(results) == 1
    standalone = results[0].read_text(encoding="utf-8")
    assert r"\documentclass" in standalone and r"\usepackage{booktabs,adjustbox}" in standalone
    assert r"\toprule" in standalone
    assert (summary.runs, summary.failed) == (14, 1)


def _raw_means(recorded: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Independent of reports.collect: per (method, target) means of the recorded metrics, and the dense runs'."""
    runs = recorded[recorded["status"] == "FINISHED"]
    dense = runs[runs[f"tags.{schema.TAG_METHOD}"] == "dense"]
    compressed = runs[runs["params.target"] != "None"]
    names = [f"metrics.{name}" for name in (schema.ACC_COMPRESSED, schema.ACC_FINETUNED, schema.FLOPS_DROP,
                                            schema.PARAMS_DROP, schema.FLOPS)]
    return compressed.groupby([f"tags.{schema.TAG_METHOD}", "params.target"])[names].mean(), dense[
        f"metrics.{schema.ACC_TRAINED}"]


def test_table_numbers_are_the_runs_means(recorded, done, report):
    means, dense = _raw_means(recorded)
    grid = tables.result_grid(done, "numbers")
    assert grid.sections[0].rows[0][0] == "Dense" and grid.sections[0].rows[0][2].mean == pytest.approx(
        100 * dense.mean())
    tex = next(p for p in report[0].tables if p.name.startswith("results__") and "standalone" not in p.name)
    text = tex.read_text(encoding="utf-8")
    method_of = dict(zip(done["label"], done["method"], strict=True))
    checked = 0
    for section in grid.sections[1:]:
        target = section.title.removeprefix("FLOPs drop target ").removesuffix(" %")
        for label, before, after, flops, flops_drop, _, params_drop in section.rows:
            expected = means.loc[(method_of[label], str(float(target) / 100))]
            assert before.mean == pytest.approx(100 * expected[f"metrics.{schema.ACC_COMPRESSED}"])
            assert after.mean == pytest.approx(100 * expected[f"metrics.{schema.ACC_FINETUNED}"])
            assert flops_drop == f"{100 * expected[f'metrics.{schema.FLOPS_DROP}']:.1f}"
            assert params_drop == f"{100 * expected[f'metrics.{schema.PARAMS_DROP}']:.1f}"
            assert flops == tables.count_text(expected[f"metrics.{schema.FLOPS}"])
            assert f"{after.mean:.1f} \\pm {after.std:.1f}" in text
            checked += 1
    assert checked == len(COMPRESSED) * len(TARGETS)
    assert f"{100 * dense.mean():.1f} \\pm" in text


def test_mixed_budgets_are_refused(done):
    other = done[done["seed"] == 1].assign(budget_hash="0123456789ab", **{"budget.weight_decay": "0.0005"})
    mixed = pd.concat([done[done["seed"] == 0], other], ignore_index=True)
    with pytest.raises(ValueError, match=r"weight_decay \(0\.0005 vs 0\.001\)"):
        tables.result_grid(mixed, "mixed")
    with pytest.raises(ValueError, match="weight_decay"):
        budget.budget_grid(mixed, "mixed")


def test_latex_escapes_specials(done):
    assert tables.latex_escape("group_norm 50% & $x") == r"group\_norm 50\% \& \$x"
    runs = done.assign(label=done["label"].str.replace("L1 norm", "group_norm"))
    latex = tables.latex_fragment(tables.result_grid(runs, "under_score"), "tab:x")
    assert r"group\_norm" in latex and r"under\_score" in latex
    body = latex.replace(r"\label{tab:x}", "")
    assert not re.search(r"(?<!\\)_", body)
    latex = tables.latex_fragment(budget.budget_grid(done, "budget"), "tab:b")
    assert "Weight decay & 0.001" in latex


def test_html_is_self_contained_and_lists_provenance(recorded, report):
    summary, _ = report
    page = summary.html.read_text(encoding="utf-8")
    # Nothing the page loads comes from elsewhere; its only references are links to the runs in the MLflow UI.
    assert not re.findall(r"""src\s*=\s*["'](?!data:)""", page)
    assert set(re.findall(r"""href\s*=\s*["']([a-z]+://[^/"']+)""", page)) == {links.DEFAULT_UI}
    assert len(re.findall(r"<a href=", page)) == len(re.findall(r"href=", page))
    assert "<link" not in page and "<script" not in page
    pngs = [p for p in summary.figures if p.suffix == ".png"]
    assert page.count('src="data:image/png;base64,') == len(pngs)
    md = summary.markdown.read_text(encoding="utf-8")
    finished = recorded[recorded["status"] == "FINISHED"]
    for text in (page, md):
        for tag in (schema.TAG_TORCH_VERSION, schema.TAG_GIT_COMMIT, schema.TAG_CPU_MODEL):
            assert finished[f"tags.{tag}"].iloc[0] in text
        assert finished[f"tags.{schema.TAG_BUDGET_HASH}"].iloc[0] in text
        assert "seeds 0, 1" in text and "digits" in text
        assert "FAILED" in text and "unknown option" in text  # the failed run, with its error
    for png in pngs:
        assert f"figures/{png.name}" in md


def test_every_table_and_figure_lists_its_runs_linked_to_the_ui(done, report):
    summary, _ = report
    md = summary.markdown.read_text(encoding="utf-8")
    lists = re.findall(r"^Runs behind this (table|figure) \((\d+)\): (.*)$", md, flags=re.M)
    pngs = [p for p in summary.figures if p.suffix == ".png"]
    assert Counter(kind for kind, _, _ in lists) == {"figure": len(pngs), "table": len(summary.tables) // 2}
    experiment = tracking.client().get_experiment_by_name(EXPERIMENT).experiment_id
    result_runs = next(found for kind, _, found in lists if kind == "table")  # the results table: every run
    for run_id in done["run_id"]:
        assert f"({links.run_url(links.DEFAULT_UI, experiment, run_id)})" in result_runs
    assert links.run_url("http://h:1", "2", "abc") == "http://h:1/#/experiments/2/runs/abc?workflowType=machine_learning"
    assert all(int(count) == text.count("](http") for _, count, text in lists)


def test_captions_carry_no_hash_path_or_absent_claims(done, report, store):
    summary, _ = report
    md = summary.markdown.read_text(encoding="utf-8")
    captions = re.findall(r"^\*(.+)\*$", md, flags=re.M)
    assert len(captions) >= len(summary.tables) // 2
    budget_hash = done["budget_hash"].iloc[0]
    for caption in captions:
        assert budget_hash not in caption and str(store) not in caption, caption
        assert "over seeds 0." not in caption and "seeds 0)" not in caption
    # The hash is in the budget table instead.
    grid = budget.budget_grid(done, "b")
    assert ["Budget hash", budget_hash] in grid.sections[0].rows
    # Without a dense run, no caption claims a dotted dense line.
    fig = figures.tradeoff_figure(done[~done["reference"]], schema.FLOPS_DROP, "no dense")
    assert not [text for text in fig.axes[0].get_legend_handles_labels()[1] if text.startswith("Dense")]


def test_experiments_open_on_runs_and_runs_say_what_they_are(recorded):
    mlc = tracking.client()
    assert mlc.get_experiment_by_name(EXPERIMENT).tags[schema.TAG_EXPERIMENT_KIND] == "custom_model_development"
    # An experiment made without the kind (by MLflow, or an older version) gets it when the suite opens it.
    old = mlc.create_experiment("made-elsewhere")
    assert schema.TAG_EXPERIMENT_KIND not in mlc.get_experiment(old).tags
    assert tracking.get_or_create_experiment("made-elsewhere") == old
    assert mlc.get_experiment(old).tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND
    finished = recorded[recorded["status"] == "FINISHED"]
    notes = finished[f"tags.{schema.TAG_NOTE}"]
    assert notes.notna().all()
    assert notes.str.contains("percent of singular values kept").all()
    lorita_run = finished[(finished[f"tags.{schema.TAG_METHOD}"] == "lorita") & (finished["params.target"] == "0.5")]
    assert lorita_run[f"tags.{schema.TAG_NOTE}"].iloc[0].startswith("**LoRITa (N=2)** on fcn / digits, compressed "
                                                                    "until its FLOPs drop by 50 %")


def test_ablations_are_found_and_drawn(done):
    halved = done[done["seed"] == 1].assign(budget_hash="0123456789ab", **{"budget.weight_decay": "0.0005"})
    sets = collect.weight_decay_ablations(pd.concat([done, halved], ignore_index=True))
    assert len(sets) == 1 and sorted(sets[0]["weight_decay"].unique()) == [0.0005, 0.001]
    fig = figures.ablation_figure(sets[0], "weight_decay", "weight decay", "wd", log_x=True)
    assert len(fig.axes) == len(TARGETS) and fig.axes[0].get_xscale() == "log"
    deeper = done.assign(model_kwargs=json.dumps({"layers": 4, "width": 64}), model_label="fcn (layers=4, width=64)")
    sets = collect.depth_ablations(pd.concat([done, deeper], ignore_index=True))
    assert len(sets) == 1 and sorted(sets[0]["layers"].unique()) == [3, 4]
    assert collect.depth_ablations(done) == []


def test_no_runs_is_a_one_line_error(report, tmp_path):
    # An experiment without runs takes the same path as an empty store (a fresh store costs seconds of migrations).
    tracking.get_or_create_experiment("empty")
    with pytest.raises(ValueError, match="no benchmark runs") as err:
        build_report(tmp_path / "out", experiment="empty")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no benchmark runs"):
        build_report(tmp_path / "out", experiment=EXPERIMENT, model="vgg16")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_every_table_compiles_and_fits_the_column_of_a_plain_article(report, tmp_path):
    standalone = [p for p in report[0].tables if p.name.endswith("_standalone.tex")]
    assert {p.name.split("__")[0] for p in standalone} == {"results", "budget"}
    for path in standalone:
        natural, column, overfull = table_width(path.read_text(encoding="utf-8"), tmp_path)
        assert not overfull and natural <= column, f"{path.name}: {natural} pt in a column of {column} pt"
    # As shipped (adjustbox in place) too.
    shutil.copy(standalone[0], tmp_path / "shipped.tex")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "shipped.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and (tmp_path / "shipped.pdf").exists()
