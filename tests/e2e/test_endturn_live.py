"""The end-of-turn model on a real link: aiortc loopback with DTX, the SDK over TLS, the emulator.

With DTX the frames stop when the candidate does, so only the clock can score the silence and end
the turn: the end_score event and the ActivityEnd must both land inside the frame gap.
"""

import asyncio

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import child_pids, emulated_session, end_model_threads

import workbench
from workbench.core.params import TurnParams
from workbench.emulator import EmulatorConfig
from workbench.store.models import smart_turn_path
from workbench.ui.cli import BUNDLED

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(smart_turn_path() is None, reason="smart-turn-v3.2-cpu.onnx not installed")]
THINKING = BUNDLED.with_name("thinking.flac")


def clip() -> np.ndarray:
    """0.5 s of digital silence, the first 4.7 s of the set's first answer, then 3 s of digital silence."""
    x, rate = sf.read(THINKING, dtype="float32")
    speech = x[int(1.0 * rate) : int(5.7 * rate)]
    z = np.zeros(int(0.5 * rate), np.float32)
    y = soxr.resample(np.concatenate([z, speech, np.zeros(3 * rate, np.float32)]), rate, 48_000)
    return np.clip(np.round(y * 32767), -32768, 32767).astype(np.int16)


async def session(out):
    params = TurnParams(end_model="smart-turn", silence_ms=300, max_silence_ms=1500)
    run = await emulated_session(out, clip(), EmulatorConfig(profile="ideal"), params=params,
                                 live_kw=dict(greeting_prompt=None), tail_s=0.5)
    return run.result, run.emu_log


def test_the_clock_scores_and_ends_the_turn_while_dtx_sends_no_frames(tmp_path):
    children = child_pids()
    result, log = asyncio.run(session(tmp_path / "rec"))
    assert result.error is None
    # The session ran its own end-model worker (a child process and a thread) and closed it: nothing left.
    assert child_pids() == children and end_model_threads() == []
    rec = workbench.load(tmp_path / "rec")
    scores = rec.of_kind("end_score")
    ends = rec.of_kind("vad").query("decision == 'speech_end'")
    assert len(scores) >= 1 and len(ends) == 1
    s, e = scores.iloc[0], ends.iloc[0]
    assert s["model"] == "smart-turn" and 0.0 <= s["probability"] <= 1.0 and s["threshold"] == 0.5
    assert s["silence_ms"] >= 300  # scored after the window, not before
    assert e["reason"] == ("end_model" if s["complete"] else "max_silence")
    if s["complete"]:
        assert e["t"] == s["t"]  # the score's own tick sent ActivityEnd
    else:
        assert e["t"] - e["media_t"] == pytest.approx(1.5, abs=0.05)
    # Both decisions were taken inside a gap in the frames: no frame arrived between speech end and ActivityEnd.
    frames = rec.of_kind("frame")
    between = frames[(frames["t"] > s["media_t"] + 0.15) & (frames["t"] < e["t"])]
    assert between.empty
    assert frames["t"].max() < s["t"] - 0.25  # frames had stopped (DTX): the clock scored the silence
    # The timeline shows the score with its probability above the live turn bar.
    from workbench.ui.plots import TimelinePlot

    plot = TimelinePlot(rec)
    assert f"{s['probability']:.2f}" in [t.get_text() for t in plot.axes["turns"].texts]
    # The server got the ActivityEnd (its own log, not only our count).
    assert [x.kind for x in log if x.direction == "in" and x.kind == "activity_end"] == ["activity_end"]
