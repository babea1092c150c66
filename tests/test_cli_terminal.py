"""The CLI on the terminal without a store: help and version, "did you mean", progress bars, the OpenMP default.
(tests/test_cli_store.py has the commands that read and write a store.)"""

import io
import os
import re
from importlib.metadata import version

import pytest

from benchmarks.cli import build_parser, main
from benchmarks.data import load_dataset
from benchmarks.errors import did_you_mean
from benchmarks.models import create_model
from benchmarks.run.train import Phase, train


def _subparsers(parser):
    action = next(a for a in parser._actions if a.dest in ("command", "verb"))
    return action.choices


def test_every_subcommand_has_a_description_and_the_defaults_show(capsys):
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"run", "sweep", "results", "compare", "runs", "methods", "report"} <= set(commands)
    for name, sub in [*commands.items(), *(("runs " + k, v) for k, v in _subparsers(commands["runs"]).items())]:
        assert sub.description, name
    run_help = commands["run"].format_help()
    assert re.search(r"--seed SEED\s+seed of the initialization", run_help)
    assert "training epochs (budget.epochs; default 30)" in " ".join(run_help.split())
    assert "(default 1)" in commands["sweep"].format_help()  # --jobs: argparse's default, shown
    with pytest.raises(SystemExit) as end:
        main(["--version"])
    assert end.value.code == 0 and capsys.readouterr().out.strip() == f"lorita-bench {version('lorita-bench')}"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_phase_without_epochs_shows_no_bar(monkeypatch):
    data = load_dataset("digits")
    model = create_model("fcn", 10, (1, 8, 8), layers=2, width=8)
    screen = _Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    phase = Phase(epochs=0, lr=0.1, schedule="cosine", optimizer="sgd", momentum=0.9, weight_decay=0.0,
                  label_smoothing=0.0, batch_size=64, augment=False)
    assert train(model, data, phase, seed=0, desc="fine-tune 1/1") == []
    assert "fine-tune" not in screen.getvalue()
    train(model, data, Phase(**{**phase.__dict__, "epochs": 1}), seed=0, desc="fine-tune 1/1")
    shown = screen.getvalue()
    assert "fine-tune 1/1" in shown  # the bar shows when there are epochs (the check can fail)
    assert "epoch 1" in shown and "batch" in shown  # and within the epoch, its batches


def test_openmp_threads_sleep_while_they_wait_unless_the_user_says_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["methods"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["methods"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("typed, choices, suggested", [
    ("widht", ["layers", "width"], "width"), ("fnc", ["fcn", "cnn", "vit"], "fcn"),
    ("resnet18", ["resnet20", "resnet56", "tv:resnet18"], "tv:resnet18"), ("termnial", ["terminal", "Default"],
                                                                           "terminal"),
    ("depth", ["layers", "width"], None), ("x", ["fcn"], None), ("fcn", ["fcn"], None),
])
def test_did_you_mean_suggests_near_names_only(typed, choices, suggested):
    assert did_you_mean(typed, choices) == (f" (did you mean {suggested!r}?)" if suggested else "")
