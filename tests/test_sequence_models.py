"""Sequence models on digits read row by row: the models, the data, LoRITa's low rank on an LSTM, and pruning
criteria that do not apply recorded as such (FINISHED, tagged, never trained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import sgd_epochs, write_sweep

import baselines
import lorita
from benchmarks import tracking
from benchmarks.config import ConfigError, make_config
from benchmarks.data import batches, load_dataset, normalize
from benchmarks.models import ModelError, create_model
from benchmarks.run.pipeline import execute
from benchmarks.sweeps.driver import run_sweep
from benchmarks.sweeps.grid import expand, load_sweep, parse_sweep
from benchmarks.tracking import schema

MNIST_10K = Path("/work/shared/data/mnist-10k")
SEQUENCES = Path(__file__).parents[1] / "benchmarks" / "configs" / "sequences.yaml"


@pytest.mark.parametrize(("name", "kw"), [("lstm", {"layers": 2, "hidden": 8, "bidirectional": True}),
                                          ("gru", {"hidden": 8}),
                                          ("transformer", {"dim": 8, "depth": 1, "heads": 2, "mlp_dim": 16})])
def test_sequence_models_classify_sequences(name, kw):
    model = create_model(name, 10, (8, 8), **kw)
    assert model(torch.randn(3, 8, 8)).shape == (3, 10)
    assert baselines.classifier_name(model) == "classifier"


def test_sequence_models_refuse_images_and_bad_options():
    with pytest.raises(ModelError, match=r"lstm: in_shape must be \(time steps, features\)"):
        create_model("lstm", 10, (1, 8, 8))
    with pytest.raises(ModelError, match="gru: bidirectional must be true or false"):
        create_model("gru", 10, (8, 8), bidirectional="yes")
    with pytest.raises(ModelError, match="transformer: dim must be divisible by heads"):
        create_model("transformer", 10, (8, 8), dim=10, heads=4)
    with pytest.raises(ModelError, match=r"fcn: in_shape must be \(C, H, W\)"):
        create_model("fcn", 10, (8, 8))


def test_digits_seq_is_digits_read_row_by_row():
    images, rows = load_dataset("digits"), load_dataset("digits-seq")
    assert rows.in_shape == (8, 8) and images.in_shape == (1, 8, 8)
    assert torch.equal(rows.train_x, images.train_x.squeeze(1)) and torch.equal(rows.test_y, images.test_y)
    assert rows.fingerprint != images.fingerprint
    x, _ = next(batches(rows.train_x, rows.train_y, 5, mean=rows.mean, std=rows.std, augment=False, shuffle=False))
    assert torch.equal(x, normalize(images.train_x[:5], images.mean, images.std).squeeze(1))


@pytest.mark.skipif(not MNIST_10K.is_dir(), reason="shared mnist-10k copy not present")
def test_mnist_seq_reads_the_same_split():
    rows = load_dataset("mnist-seq", data_root=str(MNIST_10K))
    images = load_dataset("mnist", data_root=str(MNIST_10K))
    assert rows.in_shape == (28, 28) and torch.equal(rows.test_x, images.test_x.squeeze(1))


def _significant_values(factors: int) -> tuple[int, int]:
    """Significant singular values (above 1e-2 of each matrix's largest) of an LSTM trained on digits-seq, summed
    over every matrix and over the recurrent ones."""
    data = load_dataset("digits-seq")
    x, y = normalize(data.train_x, data.mean, data.std), data.train_y
    torch.manual_seed(0)
    model = lorita.overparameterize(create_model("lstm", 10, data.in_shape, hidden=32), factors)
    sgd_epochs(model, x, y, lr=0.1)
    counts = {name: int((s > 1e-2 * s[0]).sum()) for name, s in lorita.spectra(lorita.collapse(model)).items()}
    return sum(counts.values()), sum(n for name, n in counts.items() if name.startswith("rnn."))


def test_composition_induces_low_rank_in_an_lstm_on_digits_seq():
    (dense, dense_rnn), (composed, composed_rnn) = _significant_values(1), _significant_values(3)
    assert composed < 0.7 * dense, (composed, dense)
    assert composed_rnn < 0.7 * dense_rnn, (composed_rnn, dense_rnn)


def test_dry_run_tells_applicable_from_not():
    example = torch.zeros(1, 8, 8)
    fcn = create_model("fcn", 10, (1, 8, 8), layers=3, width=32)
    assert baselines.not_applicable(fcn, "l1", 0.5, example_input=torch.zeros(1, 1, 8, 8)) is None
    reason = baselines.not_applicable(create_model("gru", 10, (8, 8), hidden=16), "l1", 0.5, example_input=example)
    assert reason and "\n" not in reason and len(reason) <= 300


def _cfg(store: Path, **kw) -> object:
    return make_config({"experiment": "sequences", "model": "lstm", "model_kwargs": {"hidden": 8},
                        "dataset": "digits-seq", "cache_dir": str(store / "cache"), "device": "cpu",
                        "budget": {"epochs": 1, "finetune_epochs": 1, "batch_size": 64}, **kw})


@pytest.mark.ci  # the module's tracking store takes seconds to create
def test_not_applicable_pruning_is_recorded_finished_without_training(store):
    cfg = _cfg(store, method="l1", target_metric="flops_drop", target=0.5)
    result = execute(cfg, latency=False)
    assert result.status == schema.STATUS_FINISHED and result.not_applicable
    tags = tracking.search_runs("sequences").iloc[0]
    assert tags[f"tags.{schema.TAG_NOT_APPLICABLE}"] == result.not_applicable
    assert not (store / "cache" / "trained").exists(), "a not-applicable run must not train"
    assert execute(cfg, latency=False).status == schema.STATUS_SKIPPED  # finished: never resumed or rerun


@pytest.mark.ci
def test_a_sweep_lists_not_applicable_runs_and_exits_zero(store, capsys):
    grid = {"models": [{"name": "gru", "hidden": 8}], "datasets": ["digits-seq"], "methods": ["l1", "taylor"],
            "targets": {"flops_drop": [0.5]}, "seeds": [0], "budget": {"epochs": 1}, "device": "cpu"}
    path = write_sweep(store, "seq-na", grid)
    assert run_sweep(path) == 0
    out = capsys.readouterr().out
    assert "2 finished (2 of them not applicable, not trained)" in out
    assert "N/A gru-digits-seq-l1-flops0.5-s0: " in out
    assert run_sweep(path) == 0 and "2 skipped" in capsys.readouterr().out


def test_sequences_sweep_gives_each_dataset_its_epochs():
    runs = expand(load_sweep(str(SEQUENCES)))
    assert len(runs) == 2205
    assert {(cfg.dataset, cfg.budget.epochs, cfg.budget.batch_size) for cfg in runs} == {
        ("digits-seq", 20, 128), ("mnist-seq", 10, 128), ("uea:JapaneseVowels", 30, 16), ("uea:BasicMotions", 150, 16),
        ("uea:ItalyPowerDemand", 30, 16)}
    assert {cfg.model for cfg in runs} == {"lstm", "gru", "transformer"}
    with pytest.raises(ConfigError, match=r"datasets\[0\].budget must be a mapping of budget fields to one value"):
        parse_sweep({"name": "x", "models": ["lstm"], "methods": ["dense"],
                     "datasets": [{"name": "digits-seq", "budget": {"epochs": [1, 2]}}]})
