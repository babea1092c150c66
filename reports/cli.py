"""`lorita-bench report`: registered into the harness's CLI through the `lorita_bench.commands` entry point."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from reports.build import build_report

    print(build_report(args.out, experiment=args.experiment, model=args.model, dataset=args.dataset))
    return 0


def register(sub) -> None:
    """Add the `report` subcommand to the `lorita-bench` parser."""
    p = sub.add_parser("report", help="figures, LaTeX tables, report.md and report.html from the tracking store")
    p.add_argument("--out", default="reports_out", help="output folder (default reports_out)")
    p.add_argument("--experiment", help="only this experiment (default: all)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--dataset", help="only this dataset")
    p.set_defaults(handler=_report)
