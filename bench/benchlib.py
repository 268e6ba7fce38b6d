"""Shared by the bench_*.py scripts: the machine line and replacing one "## ..." section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
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
    python = Path(sys.executable)
    try:
        python_s = str(python.relative_to(HERE.parent))  # the project's .venv: say so, not where this clone is
    except ValueError:
        python_s = str(python)
    import shlex

    return shlex.join([python_s, script_s, *sys.argv[1:]])  # quoted: an empty argument stays visible


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


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A bench script's parser: described by its docstring's first line, with ``--write`` (see ``publish``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    return ap


def publish(title: str, text: str, write: bool) -> None:
    """Print a section; with ``write``, also put it into BENCHMARKS.md."""
    print(text)
    if write:
        print(f"wrote {write_section(title, text)}", file=sys.stderr)


class RssPeak:
    """Peak resident memory (MB) above the level at creation, sampled every 0.5 s while ``run()`` runs."""

    def __init__(self) -> None:
        self.base = rss_mb()
        self.peak = self.base

    async def run(self) -> None:
        import asyncio

        while True:
            self.peak = max(self.peak, rss_mb())
            await asyncio.sleep(0.5)

    @property
    def growth_mb(self) -> float:
        return self.peak - self.base


class CpuTrace:
    """This process's CPU seconds (all threads, and the calling thread's) sampled every ``period_s`` while
    ``run()`` runs, so a window of the run (e.g. all sessions streaming) can be cut out afterwards."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, process CPU s, loop-thread CPU s)

    def sample(self) -> None:
        t = resource.getrusage(resource.RUSAGE_THREAD)
        self.samples.append((time.monotonic(), process_cpu(), t.ru_utime + t.ru_stime))

    async def run(self) -> None:
        import asyncio

        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    def window(self, start: float, end: float) -> tuple[float, float, float]:
        """(seconds, process CPU s, loop-thread CPU s) between the first sample at/after ``start`` and the last
        at/before ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan"), float("nan")
        a, b = inside[0], inside[-1]
        return b[0] - a[0], b[1] - a[1], b[2] - a[2]

    def all_streaming(self, starts: list[float], ends: list[float]) -> dict[str, float]:
        """CPU while all N sessions stream (from the last start to the first end): the steady state.

        ``per_session_pct``: % of one core per session, i.e. CPU seconds per second of audio."""
        win_s, cpu, loop = self.window(max(starts), min(ends))
        return {"stream_window_s": win_s, "stream_cpu_pct": 100 * cpu / win_s,
                "stream_loop_cpu_pct": 100 * loop / win_s, "per_session_pct": 100 * cpu / win_s / len(starts)}


def pct(values: list[float] | np.ndarray, q: float) -> float:
    a = np.asarray(values, dtype=float)
    return float(np.percentile(a, q)) if a.size else float("nan")


# -- live sessions -------------------------------------------------------------------------------------------------

ROOT = HERE.parent
OUT = HERE / "out"
CANDIDATE = ROOT / "recordings" / "candidate.flac"


class ExternalEmulator:
    """``workbench emulator`` in its own process, so the bridge process's CPU is the bridge's alone."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.cert = ""

    def __enter__(self) -> ExternalEmulator:
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.cert = str(Path(self._dir.name) / "cert.pem")
        # ideal until the bridge-recovery issue lands
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "emulator", "--port", "0",
                                      "--cert-out", self.cert, "--profile", "ideal"],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "emulator at" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.base_url = line.split(" at ", 1)[1].strip()
        self.proc.stdout.readline()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self._dir.cleanup()

    def ssl_context(self):  # noqa: ANN201
        from workbench.emulator.certs import client_context

        return client_context(Path(self.cert))


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each live thread of this process, by thread id, with its name."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
