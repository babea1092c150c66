"""`lorita-bench report`: registered into the harness's CLI through the `lorita_bench.commands` entry point."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from reports.build import build_report

    print(f"building the report in {args.out} (figures, tables, report.md and report.html)", flush=True)
    print(build_report(args.out, experiment=args.experiment, model=args.model, dataset=args.dataset,
                       ui_url=args.ui_url))
    return 0


def register(sub) -> None:
    """Add the `report` subcommand to the `lorita-bench` parser."""
    p = sub.add_parser("report", help="figures, LaTeX tables, report.md and report.html from the tracking store")
    p.add_argument("--out", default="reports_out", help="output folder (default reports_out)")
    p.add_argument("--experiment", help="only this experiment (default: all)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--ui-url", help="the MLflow UI the report links runs to (default: the tracking server, or "
                                    "http://127.0.0.1:5000 where `lorita-bench ui` serves a local store)")
    p.set_defaults(handler=_report)
