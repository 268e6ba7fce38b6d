"""What the notebooks call: one short session on the emulator (or real Gemini), and finding recordings.

Jupyter already runs an event loop, so ``asyncio.run`` fails there; ``session`` is a coroutine
for top-level ``await`` in a cell (in a script, ``asyncio.run(session(...))``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.analysis.replay import Turn, vad_events_to_turns
from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE
from workbench.store.recording import Recording, load
from workbench.ui.cli import BUNDLED

RECORDINGS_DIR = BUNDLED.parent
PREFIX = "notebook-"


@dataclass
class NotebookSession:
    """A finished session: where it went, what it recorded, and how it ended."""

    recording: Recording
    endpoint: str  # "emulator" or "gemini"
    activities: int
    turn_completes: int  # the greeting's included
    error: str | None


async def session(audio: str | Path = BUNDLED, *, seconds: float | None = None, out_dir: str | Path | None = None,
                  recordings_dir: str | Path | None = None, params: TurnParams | None = None, dtx: bool = True,
                  use_gemini: bool | None = None, reply_s: float = 1.0) -> NotebookSession:
    """Play ``audio`` (its first ``seconds``) as the microphone through the whole bridge and load the recording.

    ``use_gemini=None`` means real Gemini when ``GEMINI_API_KEY`` is set, else the embedded emulator
    (whose view of the session, violations included, lands in ``emulator.jsonl``).  ``out_dir``
    defaults to ``<recordings_dir>/notebook-<time>``.
    """
    from workbench.core.pcm import to_int16
    from workbench.emulator import Emulator, EmulatorConfig
    from workbench.io import bridge, live
    from workbench.store.audiofile import load_mono

    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds:g}")
    gemini = bool(os.environ.get("GEMINI_API_KEY")) if use_gemini is None else use_gemini
    samples = to_int16(load_mono(Path(audio), MIC_RATE))
    if seconds is not None:
        samples = samples[: int(round(seconds * MIC_RATE))]
    if out_dir is None:
        out_dir = Path(recordings_dir or RECORDINGS_DIR) / f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    settings = live.LiveSettings(base_url=None)
    cfg = bridge.SessionConfig(params=params or TurnParams(), live=settings, dtx=dtx, name="notebook",
                               source=str(audio))
    if gemini:
        result = await bridge.run_session(samples, cfg, out_dir)
    else:
        async with Emulator(EmulatorConfig(reply_s=reply_s)) as emu:  # the real profile, as the bridge meets live
            settings.base_url = emu.base_url
            settings.ssl_context = emu.client_ssl_context()
            result = await bridge.run_session(samples, cfg, out_dir)
        emu.write_log(out_dir)
    return NotebookSession(load(result.path), "gemini" if gemini else "emulator", result.activities,
                           result.answered, result.error)


def newest_recording(recordings_dir: str | Path | None = None, prefix: str = PREFIX) -> Path | None:
    """The most recent finished ``<prefix>*`` recording in ``recordings_dir`` (default ``recordings/``)."""
    root = Path(recordings_dir or RECORDINGS_DIR)
    found = sorted((p for p in root.glob(f"{prefix}*") if (p / "events.jsonl").is_file()),
                   key=lambda p: (p / "session.json").stat().st_mtime if (p / "session.json").exists() else 0.0)
    return found[-1] if found else None


def emulator_log(rec: Recording | str | Path) -> pd.DataFrame:
    """The emulator's own log beside a recording (``emulator.jsonl``); empty when the session used Gemini."""
    path = (rec.path if isinstance(rec, Recording) else Path(rec)) / "emulator.jsonl"
    columns = ["t", "conn", "direction", "kind", "n_bytes", "detail"]
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    return pd.read_json(path, lines=True, convert_dates=False).reindex(columns=columns)


def violations(rec: Recording | str | Path) -> pd.DataFrame:
    """Protocol violations the emulator saw (``t`` on the session clock, ``rule``, ``detail``)."""
    log = emulator_log(rec)
    v = log[log["direction"] == "violation"].rename(columns={"kind": "rule"})
    return v[["t", "conn", "rule", "detail"]].reset_index(drop=True)


def compare_turns(live: list[Turn], replayed: list[Turn]) -> pd.DataFrame:
    """Live and replayed turns side by side (session clock, s) with the differences in ms, matched in order."""
    rows = []
    for i in range(max(len(live), len(replayed))):
        a = live[i] if i < len(live) else None
        b = replayed[i] if i < len(replayed) else None
        row: dict[str, Any] = {"turn": i + 1}
        for edge in ("activity_start", "activity_end"):
            x = getattr(a, edge) if a else float("nan")
            y = getattr(b, edge) if b else float("nan")
            row |= {f"live_{edge}": x, f"replay_{edge}": y, f"{edge}_diff_ms": (y - x) * 1000.0}
        row |= {"live_end_reason": a.end_reason if a else None, "replay_end_reason": b.end_reason if b else None}
        rows.append(row)
    return pd.DataFrame(rows).set_index("turn") if rows else pd.DataFrame()


def live_turns(rec: Recording) -> list[Turn]:
    """The turns the detector took during the session, from the recording's ``vad`` events."""
    return vad_events_to_turns(rec.of_kind("vad").itertuples())
