"""Whole sessions: real aiortc on loopback, the real google-genai SDK over TLS, the embedded emulator."""

import asyncio
import json

import numpy as np
import pytest
import soundfile as sf

import workbench
from workbench.analysis.replay import replay_recording
from workbench.analysis.tables import turn_table
from workbench.core.turns import TurnParams
from workbench.emulator import Emulator, EmulatorConfig
from workbench.io import bridge, live
from workbench.ui.cli import BUNDLED, main

pytestmark = pytest.mark.slow
LABELS = BUNDLED.with_suffix(".labels.txt").read_text().splitlines()
TRUTH = [tuple(map(float, line.split("\t")[:2])) for line in LABELS]


def bundled() -> np.ndarray:
    x, rate = sf.read(BUNDLED, dtype="int16")
    assert rate == 48_000
    return x


async def session(audio, out, dtx=True, **emu_kw):
    async with Emulator(EmulatorConfig(**emu_kw), port=0) as emu:  # the real profile
        settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.client_ssl_context())
        cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=dtx, name="test")
        result = await bridge.run_session(audio, cfg, out)
        return result, list(emu.log), list(emu.violations)


@pytest.fixture(scope="module")
def dtx_session(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "demo"
    result, log, violations = asyncio.run(session(bundled(), out, dtx=True))
    return result, log, violations, workbench.load(out)


def test_every_turn_answered_in_order_with_no_violation(dtx_session):
    result, log, violations, rec = dtx_session
    assert result.error is None
    assert violations == []
    tt = turn_table(rec)
    assert len(tt) == len(TRUTH) == 3
    assert tt["answered"].all()
    # PCM seconds per activity: about each answer's length (DTX drops the digital silence between words)
    assert all(3.0 < a < 6.5 for a in tt["audio_s"])
    # ActivityEnd, then the answer, then turn_complete, per turn
    assert (tt["activity_end"] < tt["first_audio"]).all() and (tt["first_audio"] < tt["turn_complete"]).all()
    # the server received, per activity: start, audio..., end, nothing else in between
    kinds = [e.kind for e in log if e.direction == "in" and e.kind in ("audio", "activity_start", "activity_end")]
    opened = False
    for k in kinds:
        if k == "activity_start":
            assert not opened
            opened = True
        elif k == "activity_end":
            assert opened
            opened = False
        else:
            assert opened, "audio outside an activity reached the server"


def test_frames_really_stopped_and_turns_still_ended_on_the_clock(dtx_session):
    _, _, _, rec = dtx_session
    gaps = rec.of_kind("frame_gap")
    assert (gaps["gap_s"] > 2.0).sum() >= 2  # DTX: no packets between answers
    ends = rec.of_kind("vad").query("decision == 'speech_end'")
    assert list(ends["reason"]) == ["silence"] * 3
    lateness = ends["t"] - ends["media_t"] - 0.7
    assert (lateness >= -0.001).all() and (lateness < 0.1).all()


def test_recording_round_trip(dtx_session):
    _, _, _, rec = dtx_session
    assert rec.meta["ended"] and rec.meta["params"]["silence_ms"] == 700
    assert set(rec.events["kind"]) >= {"session", "frame", "frame_gap", "vad", "send", "server", "ws", "loop_lag"}
    wire = rec.of_kind("send").query("stage == 'wire'")
    assert {"setup", "client_content", "activity_start", "audio", "activity_end"} <= set(wire["msg"])
    # the 16 kHz audio sent equals the bytes of the audio messages
    app_audio = rec.of_kind("send").query("stage == 'app' and msg == 'audio'")
    assert rec.sent.size == app_audio["n_samples"].sum()
    assert rec.model.size > 24_000 * 3 * 0.5  # three spoken answers (and the greeting)
    pts = rec.of_kind("frame")["pts_s"]
    assert abs(rec.mic.size / 48_000 - (pts.iloc[-1] + 0.02 - pts.iloc[0])) < 0.05  # mic placed by media time


def test_replay_of_the_recording_reproduces_live_decisions(dtx_session):
    _, _, _, rec = dtx_session
    live_vad = rec.of_kind("vad")
    replay = replay_recording(rec, TurnParams.from_dict(rec.meta["params"]))
    starts = live_vad.query("decision == 'speech_start'")
    ends = live_vad.query("decision == 'speech_end'")
    assert len(replay) == len(starts) == len(ends)
    for turn, (_, s), (_, e) in zip(replay, starts.iterrows(), ends.iterrows(), strict=True):
        assert turn.speech_start == pytest.approx(s["media_t"], abs=1e-6)
        assert turn.activity_start == pytest.approx(s["t"], abs=0.011)
        assert turn.activity_end == pytest.approx(e["t"], abs=0.011)


def test_cli_demo_prints_turn_table(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "d"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ActivityEnd sent" in out and out.count(" yes") == 3
    emu = [json.loads(line) for line in (tmp_path / "d" / "emulator.jsonl").read_text().splitlines()]
    assert not [e for e in emu if e["direction"] == "violation"]
