"""Smoke tests of the perf benchmarks (benchmarks/perf): each runs with --quick and writes valid JSON.

No timing is asserted here, ever: the numbers depend on the machine and its load.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.perf import all as perf_all
from benchmarks.perf import data_path, inference, latency_table, planning, train_step

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = {"benchmark", "machine", "settings", "rows"}
# One intra-op thread keeps the smoke runs fast on a busy machine (two threads on loaded cores crawl).
QUICK = ["--quick", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())  # json.loads rejects nothing; the writer forbids NaN
    assert TOP_KEYS <= data.keys() and data["benchmark"] == name
    assert {"cpu", "torch", "torch_threads", "gpu"} <= data["machine"].keys()
    assert (out / f"{name}.md").read_text().count("|") > 10
    return data


def test_train_step_quick(tmp_path):
    returned = train_step.main([*QUICK, "--out", str(tmp_path)])
    data = _load(tmp_path, "train_step")
    assert data == json.loads(json.dumps(returned))
    assert {(r["model"], r["factors"], r["mode"]) for r in data["rows"]} == {
        (m, n, mode) for m in train_step.QUICK_MODELS for n in (2, 3) for mode in train_step.MODES}
    for r in data["rows"]:
        assert {"dense_ms", "lorita_ms", "ratio", "extra_fwd_macs", "extra_fwd_macs_rel", "weight_path_layers",
                "composed_layers", "target", "met"} <= r.keys()
        assert r["ratio"] > 0 and r["extra_fwd_macs"] >= 0
    # auto takes the cheaper path per layer, so its analytic extra never exceeds either fixed mode's.
    extra = {(r["model"], r["factors"], r["mode"]): r["extra_fwd_macs"] for r in data["rows"]}
    for (model, n, mode), value in extra.items():
        if mode == "auto":
            assert value <= min(extra[(model, n, "activation")], extra[(model, n, "weight")])
    assert all(r["target"] is None for r in data["rows"])  # targets are judged at batch 128 only


def test_data_path_quick(tmp_path):
    data_path.main([*QUICK, "--out", str(tmp_path)])
    data = _load(tmp_path, "data_path")
    assert len(data["rows"]) == 2 and {"speedup", "target", "met"} <= data.keys()
    for r in data["rows"]:
        assert r["images_per_s"] > 0 and r["images"] == data["settings"]["images"]


def test_planning_quick(tmp_path):
    planning.main([*QUICK, "--out", str(tmp_path)])
    data = _load(tmp_path, "planning")
    (row,) = data["rows"]
    assert {"spectra_s", "plan_first_s", "plan_cached_s", "plan_cached_s_by_target", "fvcore_s",
            "svdvals_float64_s", "met"} <= row.keys()
    assert set(row["plan_cached_s_by_target"]) == {str(t) for t in planning.TARGETS}


def test_inference_quick(tmp_path):
    inference.main([*QUICK, "--out", str(tmp_path)])
    data = _load(tmp_path, "inference")
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"dense", "lorita", *inference.PRUNERS}
    for r in data["rows"]:
        assert {"latency_ms", "speedup", "flops_speedup", "flops_drop", "device", "batch"} <= r.keys()
        if r["method"] != "dense" and r["error"] is None:
            assert abs(r["flops_drop"] - r["target_drop"]) <= 0.02


@pytest.mark.ci
def test_latency_table_quick(tmp_path):
    latency_table.main([*QUICK, "--out", str(tmp_path), "--speedup", "1.2", "--speedup-models", "fcn",
                        "--speedup-batch", "8"])
    data = _load(tmp_path, "latency_table")
    assert {(r["method"], r["batch"]) for r in data["rows"]} == {(m, b) for m in ("svd", "l1") for b in (1, 8)}
    for r in data["rows"]:
        assert r["table_build_s"] > 0
        if "failure" not in r:
            assert {"predicted_ms", "measured_ms", "iqr_ms", "rel_error", "speedup", "flops_drop"} <= r.keys()
            assert r["rel_error"] == pytest.approx(r["predicted_ms"] / r["measured_ms"] - 1)
    assert sum(r["target"].startswith("speedup") for r in data["rows"]) == 2
    assert "Plans within ±15 %" in (tmp_path / "latency_table.md").read_text()


def test_all_writes_combined_markdown(tmp_path):
    results = perf_all.main([*QUICK, "--only", "data_path", "--out", str(tmp_path)])
    assert set(results) == {"data_path"}
    text = (tmp_path / "perf.md").read_text()
    assert text.startswith("Machine: ") and "torch" in text and "### Data path" in text


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    env = {**os.environ, "QUICK": "1"}
    subprocess.run(["bash", str(ROOT / "benchmarks/perf/gpu_check.sh"), str(tmp_path)], check=True, env=env,
                   cwd=tmp_path, timeout=600)
    _load(tmp_path, "train_step")
    _load(tmp_path, "inference")
