"""The report from a tiny real tracking store: figures, LaTeX tables, Markdown and self-contained HTML."""

import json
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest

from benchmarks import tracking
from benchmarks.config import make_config
from benchmarks.run.pipeline import execute
from benchmarks.tracking import schema
from reports import collect, figures, tables
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
    # An option the model does not take fails inside the pipeline, which records the run FAILED.
    with pytest.raises(ValueError, match="unknown option"):
        execute(make_config({**base, "model_kwargs": {"layers": 3, "depth": 2}, "method": "dense"}), latency=False)


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
    assert r"\documentclass" in standalone and r"\usepackage{booktabs}" in standalone and r"\toprule" in standalone
    assert (summary.runs, summary.failed) == (14, 1)


def _raw_means(recorded: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Independent of reports.collect: per (method, target) means of the recorded metrics, and the dense base."""
    runs = recorded[recorded["status"] == "FINISHED"]
    dense = runs.loc[runs[f"tags.{schema.TAG_METHOD}"] == "dense", f"metrics.{schema.ACC_TRAINED}"]
    compressed = runs[runs["params.target"] != "None"]
    means = compressed.groupby([f"tags.{schema.TAG_METHOD}", "params.target"])[
        [f"metrics.{schema.ACC_FINETUNED}", f"metrics.{schema.FLOPS_DROP}", f"metrics.{schema.PARAMS_DROP}"]].mean()
    return means, dense.mean()


def test_table_numbers_are_the_runs_means(recorded, done, report):
    means, base = _raw_means(recorded)
    stats = tables.result_stats(done)
    assert len(stats) == len(COMPRESSED) * len(TARGETS)
    tex = next(p for p in report[0].tables if p.name.startswith("results__") and "standalone" not in p.name)
    text = tex.read_text(encoding="utf-8")
    method_of = dict(zip(done["label"], done["method"], strict=True))
    for row in stats.itertuples():
        method = method_of[row.label]
        expected = means.loc[(method, str(row.target))]
        assert row.acc_mean == pytest.approx(100 * expected[f"metrics.{schema.ACC_FINETUNED}"])
        assert row.flops_drop_mean == pytest.approx(100 * expected[f"metrics.{schema.FLOPS_DROP}"])
        assert row.params_drop_mean == pytest.approx(100 * expected[f"metrics.{schema.PARAMS_DROP}"])
        assert row.base_acc_mean == pytest.approx(100 * base)
        assert row.n == len(SEEDS)
        assert f"{row.acc_mean:.1f} \\pm {row.acc_std:.1f}" in text
    assert f"{100 * base:.1f} \\pm" in text


def test_best_per_column_is_bold(done):
    # Hand-set (accuracy, FLOPs drop, params drop): svd best in accuracy and loss, l1 in FLOPs drop, lorita and
    # l1 tie in params drop (both bold).
    values = {"svd": (0.90, 0.40, 0.30), "lorita": (0.80, 0.40, 0.35), "l1": (0.70, 0.45, 0.35)}
    runs = done.copy()
    for method, (acc, flops, params) in values.items():
        runs.loc[runs["method"] == method, [schema.ACC_FINETUNED, schema.FLOPS_DROP, schema.PARAMS_DROP]] = (
            acc, flops, params)
    grid = tables.result_grid(runs, "bold")
    assert len(grid.sections) == len(TARGETS)
    method_of = dict(zip(runs["label"], runs["method"], strict=True))
    for section in grid.sections:
        bold = {method_of[row[0]]: [cell.bold for cell in row[1:]] for row in section.rows}
        # Columns: base, acc, delta, flops drop, params drop.
        assert bold["svd"] == [False, True, True, False, False]
        assert bold["lorita"] == [False, False, False, False, True]
        assert bold["l1"] == [False, False, False, True, True]
    latex = tables.latex_fragment(grid, "tab:bold")
    assert latex.count(r"\mathbf") == 5 * len(TARGETS)


def test_mixed_budgets_are_refused(done):
    other = done[done["seed"] == 1].assign(budget_hash="0123456789ab", **{"budget.weight_decay": "0.0005"})
    mixed = pd.concat([done[done["seed"] == 0], other], ignore_index=True)
    with pytest.raises(ValueError, match=r"weight_decay \(0\.0005 vs 0\.001\)"):
        tables.result_grid(mixed, "mixed")
    with pytest.raises(ValueError, match="weight_decay"):
        tables.budget_grid(mixed, "mixed")


def test_latex_escapes_specials(done):
    assert tables.latex_escape("group_norm 50% & $x") == r"group\_norm 50\% \& \$x"
    runs = done.assign(label=done["label"].str.replace("L1 norm", "group_norm"))
    latex = tables.latex_fragment(tables.result_grid(runs, "under_score"), "tab:x")
    assert r"group\_norm" in latex and r"under\_score" in latex
    body = latex.replace(r"\label{tab:x}", "")
    assert not re.search(r"(?<!\\)_", body)
    budget = tables.latex_fragment(tables.budget_grid(done, "budget"), "tab:b")
    assert r"weight\_decay & 0.001" in budget


def test_html_is_self_contained_and_lists_provenance(recorded, report):
    summary, _ = report
    page = summary.html.read_text(encoding="utf-8")
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
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
def test_standalone_table_compiles(report, tmp_path):
    tex = next(p for p in report[0].tables if p.name.endswith("_standalone.tex"))
    shutil.copy(tex, tmp_path / "table.tex")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "table.pdf").exists()
