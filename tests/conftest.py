"""Helpers shared by several test modules: child processes, Chromium, the emulator core's clock, live sessions.

Plain functions and one base dataclass, imported as ``from conftest import ...`` (pytest puts ``tests/`` on
``sys.path`` because the folder is not a package).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from workbench.emulator import SessionCore
from workbench.io import bridge
from workbench.store.recording import Recording
from workbench.ui.cli import BUNDLED

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests live in tests/<layer>/
SPEECH = REPO.parent / "shared" / "speech"  # the real-speech sources, ../shared/speech beside the checkout (tests skip)
SHORT_S = 8.5  # the bundled recording's first answer (0.5-5.5 s) and the silence after it


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
