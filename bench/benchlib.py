"""Shared by the bench_*.py scripts: the machine line and replacing one "## ..." section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE / "BENCHMARKS.md"


def machine() -> str:
    model = platform.machine()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}; os.cpu_count()={os.cpu_count()}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; numpy {np.__version__}")


def command() -> str:
    """The exact command that ran this benchmark, as written in the section header."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(HERE.parent))
    except ValueError:
        script_s = str(script)
    return " ".join([sys.executable, script_s, *sys.argv[1:]])


def section(title: str, body: str) -> str:
    """A section with the machine, command and date above ``body``."""
    return (f"## {title}\n\nMachine: {machine()}  \nCommand: `{command()}`  \n"
            f"Date: {time.strftime('%Y-%m-%d')}\n\n{body.rstrip()}\n")


def write_section(title: str, text: str, path: Path = BENCHMARKS) -> Path:
    """Replace (or append) the "## title" section, keeping every other section as it is."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = text.rstrip() + "\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _m: block, doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc.rstrip("\n") + "\n", encoding="utf-8")
    return path


def pct(values: list[float] | np.ndarray, q: float) -> float:
    a = np.asarray(values, dtype=float)
    return float(np.percentile(a, q)) if a.size else float("nan")
