"""Run the benchmarks and print one table: `python -m bench.run [--quick] [--only dispatch,logs] [--record]`.

Every figure starts its own farm processes on the shared Redis and S3 servers, measures trainfarm and
its baseline side by side, and stops them again; the services go when the run ends.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.report import Row, machine, render, save
from bench.services import Services

FIGURES = (
    "dispatch",
    "handoff",
    "admission",
    "logs",
    "submit",
    "training",
    "transfers",
    "scale",
    "sse_fanout",
    "log_flood",
    "compare",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying the suite out")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated, from {FIGURES}")
    parser.add_argument("--record", action="store_true", help="also write the table into bench/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the services' directory (logs) afterwards")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.WARNING)

    rows: list[Row] = []
    failed = []
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="trainfarm-bench-"))
    print(f"services under {root}", file=sys.stderr)
    with Services(root) as services:
        for name in chosen:
            print(f"[{time.monotonic() - started:5.0f}s] {name} ...", file=sys.stderr, flush=True)
            module = importlib.import_module(f"bench.{name}")
            try:
                rows += module.run(services, args.quick)
            except Exception:
                traceback.print_exc()
                failed.append(name)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    took = time.monotonic() - started
    title = f"{time.strftime('%Y-%m-%d')} · {machine()} · {took:.0f} s{' · --quick' if args.quick else ''}"
    render(rows, title)
    save(rows, title, record=args.record and not failed)
    if failed:
        print(f"figures that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
