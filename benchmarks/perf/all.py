"""Run every perf benchmark in sequence and write one combined markdown file, `perf.md`, headed with the machine.

`perf.md` is meant to be included verbatim under the README's "Performance" heading. It is built from the
`<name>.json` files in the output folder, so `--combine-only` rebuilds it after rerunning a single benchmark.

    python -m benchmarks.perf.all [--out DIR] [--quick] [--threads N] [--only train_step ...] [--combine-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.perf import common, data_path, inference, latency_table, planning, train_step

BENCHMARKS = {m.NAME: m for m in (train_step, data_path, planning, inference, latency_table)}
COMBINED = "perf.md"


def combined_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The machine line (of the first result), then every benchmark's section, in the given order."""
    first = next(iter(results.values()))
    quick = any(r["settings"].get("quick") for r in results.values())
    dates = sorted({r["date"][:10] for r in results.values() if r.get("date")})
    when = f" Measured {' to '.join([dates[0], dates[-1]] if len(dates) > 1 else dates)}." if dates else ""
    note = " **--quick smoke sizes: these numbers mean nothing.**" if quick else ""
    parts = [common.machine_line(first["machine"]) + when + note]
    parts += [BENCHMARKS[name].markdown(result) for name, result in results.items()]
    return "\n\n".join(parts) + "\n"


def write_combined(out: Path, names: list[str]) -> Path:
    """Write `<out>/perf.md` from the `<name>.json` results found in `out` (missing ones are skipped)."""
    out = Path(out)
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in names
               if (out / f"{name}.json").exists()}
    if not results:
        raise SystemExit(f"no results to combine in {out} (expected {', '.join(f'{n}.json' for n in names)})")
    path = out / COMBINED
    path.write_text(combined_markdown(results))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                   help="run (and combine) only these benchmarks (default: all four)")
    p.add_argument("--combine-only", action="store_true", help="run nothing; rebuild perf.md from the JSON in --out")
    return p


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = common.setup(build_parser().parse_args(argv))
    passthrough = ["--out", str(args.out)] + (["--quick"] if args.quick else [])
    if args.threads is not None:
        passthrough += ["--threads", str(args.threads)]
    results = {}
    if not args.combine_only:
        for name in args.only:
            print(f"\n== {name} ==", flush=True)
            results[name] = BENCHMARKS[name].main(passthrough)
    print(f"\nwrote {write_combined(args.out, args.only)}", flush=True)
    return results


if __name__ == "__main__":
    main()
