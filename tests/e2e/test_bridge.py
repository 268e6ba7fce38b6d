"""A whole session as ``workbench demo`` runs it: real aiortc on loopback, the real google-genai SDK over TLS, the
embedded emulator (its real profile).  One session, made by the CLI, serves every test here."""

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

import workbench
from workbench.analysis.replay import replay_recording
from workbench.analysis.tables import turn_table
from workbench.core.params import TurnParams
from workbench.ui.cli import BUNDLED, main

pytestmark = pytest.mark.slow
LABELS = BUNDLED.with_suffix(".labels.txt").read_text().splitlines()
TRUTH = [tuple(map(float, line.split("\t")[:2])) for line in LABELS]


FRAME_S = 0.02  # a mic frame


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``workbench demo --out DIR --quiet``: its exit code, what it printed, its recording, the emulator's log."""
    out = tmp_path_factory.mktemp("rec") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--quiet"])
    log = [SimpleNamespace(**json.loads(line)) for line in (out / "emulator.jsonl").read_text().splitlines()]
    return SimpleNamespace(code=code, stdout=printed.getvalue(), rec=workbench.load(out), emu_log=log)


@pytest.fixture(scope="module")
def dtx_session(demo):
    violations = [e for e in demo.emu_log if e.direction == "violation"]
    return demo.code, demo.emu_log, violations, demo.rec


def test_every_turn_answered_in_order_with_no_violation(dtx_session):
    code, log, violations, rec = dtx_session
    assert code == 0 and rec.meta["ended"]
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
    # Each ActivityEnd went on the wire one silence window after the last frame holding speech arrived, whether
    # more frames came or not: judged from the frames' arrival and the wire, not from the decision's own fields.
    frames = rec.of_kind("frame")
    clock_of_media = frames["t"].iloc[0] - frames["pts_s"].iloc[0]  # the pipeline maps media time by the first frame
    wire_ends = rec.of_kind("send").query("stage == 'wire' and msg == 'activity_end'")["t"]
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    assert len(wire_ends) == len(ends) == 3
    for speech_end, wire_t in zip(ends["media_t"], wire_ends, strict=True):
        last = frames[frames["pts_s"] + clock_of_media < speech_end - 1e-6].iloc[-1]
        assert last["pts_s"] + clock_of_media + FRAME_S >= speech_end - 1e-6  # speech ended in that frame
        assert silence_s - FRAME_S <= wire_t - last["t"] < silence_s + 0.1, (wire_t, last["t"])


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


def test_cli_demo_prints_turn_table(demo):
    assert demo.code == 0, demo.stdout
    assert "ActivityEnd sent" in demo.stdout and demo.stdout.count(" yes") == 3
