"""A session killed with SIGKILL mid-turn leaves a recording that loads and diagnoses as cut short."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, reaped, sigkill

import workbench
from workbench.analysis.diagnose import diagnose
from workbench.store.recording import AUDIO_BLOCK, EVENT_FLUSH_S, MIC_RATE

pytestmark = pytest.mark.slow

FRAME_S = 0.02
# What the recorder promises (recording._FlacStream): a SIGKILL loses at most the block being gathered
# (AUDIO_BLOCK samples) and the one libsndfile is encoding (its FLAC frames are 4096 samples): 256 ms of mic.
LIBSNDFILE_FLAC_FRAME = 4096
MIC_LOST_MAX_S = (AUDIO_BLOCK + LIBSNDFILE_FLAC_FRAME) / MIC_RATE



def _wait_for_activity(events: Path, proc: subprocess.Popen[bytes], min_pts_s: float, timeout_s: float) -> None:
    """Until an ActivityStart is on the wire and a mic frame at media time ``min_pts_s`` arrived (or fail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"session ended before it could be killed: {proc.stderr.read().decode()}"
        if events.exists():
            lines = events.read_text(errors="replace").splitlines()[:-1]  # the last may be half written
            started = any('"msg":"activity_start"' in ln and '"stage":"wire"' in ln for ln in lines)
            pts = [json.loads(ln)["pts_s"] for ln in lines[-60:] if '"kind":"frame"' in ln]
            if started and pts and max(pts) >= min_pts_s:
                return
        time.sleep(0.1)
    raise AssertionError("no ActivityStart on the wire in time")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crash") / "rec"
    with reaped(subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "demo", "--out", str(out), "--quiet"],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)) as proc:
        _wait_for_activity(out / "events.jsonl", proc, min_pts_s=3.0, timeout_s=60.0)  # mid-answer 1
        sigkill(proc)
    assert proc.returncode == -signal.SIGKILL
    return out


def test_killed_session_loads(killed: Path) -> None:
    rec = workbench.load(killed)
    assert rec.cut_short
    ev = rec.events
    assert len(ev) > 100
    assert {"frame", "vad", "send", "loop_lag"} <= set(ev["kind"])
    sends = ev[(ev["kind"] == "send") & (ev["stage"] == "wire")]
    assert "activity_start" in set(sends["msg"])
    # Audio written so far: the mic up to the last frame event, less what the recorder may lose (256 ms); more
    # only by the frames whose events were not flushed yet (events reach the OS every EVENT_FLUSH_S).
    assert round(MIC_LOST_MAX_S * 1000) == 256  # the figure recording.py documents
    frames = rec.of_kind("frame")
    last_frame_end = frames["pts_s"].iloc[-1] - frames["pts_s"].iloc[0] + FRAME_S
    mic_s = rec.mic.size / rec.mic_rate
    assert last_frame_end - MIC_LOST_MAX_S <= mic_s <= last_frame_end + EVENT_FLUSH_S + FRAME_S, (mic_s, last_frame_end)
    assert any("mic.flac" in p and "cut short" in p for p in rec.problems), rec.problems
    sent_bytes = sends[sends["msg"] == "audio"]["n_bytes"].sum()
    assert rec.sent.size > 0
    assert np.abs(rec.mic).max() > 0.01
    assert sent_bytes > 0
    for p in rec.problems:
        assert "\n" not in p


def test_killed_session_diagnosed_cut_short(killed: Path) -> None:
    rules = {f.code for f in diagnose(workbench.load(killed))}
    assert "cut_short" in rules
    out = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "diagnose", str(killed)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    assert "cut short" in out.stdout
