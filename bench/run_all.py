"""Run every bench/bench_*.py one after another (they measure CPU: never in parallel), passing the arguments on.

Run:  .venv/bin/python bench/run_all.py [--write]    (``make bench`` does this with --write)

Each benchmark prints its markdown section; with ``--write`` each replaces its own "## ..." section of
bench/BENCHMARKS.md and leaves the others alone.  Exit code 1 if any benchmark failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script), *sys.argv[1:]], cwd=HERE.parent)
        print(f"== {script.name}: exit {rc} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
