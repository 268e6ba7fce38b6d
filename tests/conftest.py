"""Helpers shared by the test modules: paths, test signals, child processes, Chromium, the emulator core's clock,
live sessions against the embedded emulator.

Tests live by layer (``tests/core``, ``store``, ``emulator``, ``io``, ``analysis``, ``ui``; ``tests/e2e`` holds whole
sessions).  Plain functions and one base dataclass, imported as ``from conftest import ...`` (pytest puts ``tests/``
on ``sys.path`` because the folders are not packages; test file names are unique across them for the same reason).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

import workbench
from workbench.core.turns import TurnParams
from workbench.emulator import Emulator, EmulatorConfig, SessionCore
from workbench.io import bridge, live
from workbench.store.recording import Recording
from workbench.ui.cli import BUNDLED

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests live in tests/<layer>/
SPEECH = REPO.parent / "shared" / "speech"  # the real-speech sources, ../shared/speech beside the checkout (tests skip)
SHORT_S = 8.5  # the bundled recording's first answer (0.5-5.5 s) and the silence after it


def tone(seconds: float, db: float = -20.0, freq: float = 400.0, rate: int = 16_000, start: int = 0,
         dtype: type = np.float32) -> np.ndarray:
    """A sine of ``seconds`` whose RMS is ``db`` dBFS (full scale 1.0, or 32768 for int16), from sample ``start``
    on, so consecutive calls continue one wave.  At 400 Hz and 16 kHz a 10 ms window holds 4 periods: every
    window's RMS is exactly ``db`` (what the energy scorer measures).  ``dtype=np.int16``: rounded samples."""
    x = 10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq * (np.arange(round(seconds * rate)) + start) / rate)
    if dtype is np.int16:
        return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    return x.astype(dtype)


def chromium() -> str | None:
    """The Chromium to drive: ``$WORKBENCH_CHROMIUM`` or the first of the usual names on ``PATH``."""
    for name in (os.environ.get("WORKBENCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def end_group(proc: subprocess.Popen[bytes], term_wait_s: float) -> None:
    """Stop a process a test started with ``start_new_session=True`` and its children (its process group):
    SIGTERM, then SIGKILL if it is still there after ``term_wait_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(term_wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kill and reap ``proc`` on the way out if the block left it running (an assertion failed first)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` as a crash would, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def child_pids() -> set[int]:
    """Live child processes of this process (from /proc, as another process would see them), without
    multiprocessing's resource tracker: one per interpreter, started by the first spawn and reused."""
    me, kids = os.getpid(), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in cmd:
                kids.add(int(d.name))
    return kids


def end_model_threads() -> list[str]:
    """Names of the end-of-turn worker's threads still alive in this process."""
    return [t.name for t in threading.enumerate() if t.name.startswith("end-model")]


def run_until(core: SessionCore, t_end: float) -> list[tuple[float, Any]]:
    """Tick exactly when the core asks to (``next_due``), up to ``t_end``, and collect (t, action)."""
    out = []
    while (t := core.next_due()) is not None and t <= t_end + 1e-9:
        out += [(t, a) for a in core.tick(t)]
    return out


def bundled_audio(seconds: float | None = None) -> np.ndarray:
    """The bundled recording (48 kHz int16), or its first ``seconds``."""
    x, rate = sf.read(BUNDLED, dtype="int16")
    assert rate == 48_000
    return x if seconds is None else x[: int(seconds * 48_000)]


@dataclass
class EmulatedRun:
    """A live session against the emulator: what the bridge returned, its recording, the emulator's side."""

    result: bridge.SessionResult
    rec: Recording
    emu_log: list[Any]
    violations: list[Any]


R = TypeVar("R")


async def emulated_session(out: Path, samples: np.ndarray, emu: EmulatorConfig | None = None, *,
                           params: TurnParams | None = None, live_kw: dict[str, Any] | None = None,
                           run_type: type[EmulatedRun] = EmulatedRun, **session: Any) -> EmulatedRun:
    """One real session: the embedded emulator (TLS on a free port), the SDK trusting its certificate, the bridge.

    ``live_kw`` goes to ``live.LiveSettings``, ``session`` to ``bridge.SessionConfig`` (``dtx`` on unless given).
    The recording is in ``out``, with the emulator's log written beside it (``emulator.jsonl``); the run carries
    the emulator's log and violations as the server saw them.
    """
    async with Emulator(emu or EmulatorConfig()) as server:
        settings = live.LiveSettings(base_url=server.base_url, ssl_context=server.client_ssl_context(),
                                     **(live_kw or {}))
        cfg = bridge.SessionConfig(params=params or TurnParams(), live=settings, name=out.name,
                                   **{"dtx": True, **session})
        result = await bridge.run_session(samples, cfg, out)
        violations = list(server.violations)
    server.write_log(out)
    return run_type(result, workbench.load(out), list(server.log), violations)


def run_concurrently(jobs: dict[str, Callable[[], Awaitable[R]]], at_once: int | None = None) -> dict[str, R]:
    """Run the coroutines ``jobs`` make in one event loop, at most ``at_once`` at a time; results by name.

    Sessions that share a loop share its lag: keep ``at_once`` low where a test judges timing (keepalive
    deadlines, a turn split by late frames), and run those alone.
    """
    async def go() -> dict[str, R]:
        gate = asyncio.Semaphore(at_once or len(jobs) or 1)

        async def gated(job: Callable[[], Awaitable[R]]) -> R:
            async with gate:
                return await job()

        done = await asyncio.gather(*(gated(job) for job in jobs.values()))
        return dict(zip(jobs, done, strict=True))

    return asyncio.run(go())
