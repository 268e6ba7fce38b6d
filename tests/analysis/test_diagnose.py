"""Diagnosis rules over synthetic recordings that mimic each failure to the event."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from workbench.analysis import diagnose
from workbench.analysis.diagnose import Finding, context, format_findings
from workbench.analysis.diagnose.context import _pings
from workbench.analysis.diagnose.responses import _why_unanswered
from workbench.core.events import (
    Client,
    Error,
    Frame,
    FrameGap,
    LoopLag,
    Sent,
    Server,
    SessionMark,
    Vad,
    Watchdog,
    Ws,
)
from workbench.store.recording import Recorder, Recording, load
from workbench.ui import cli

META = {
    "name": "synthetic",
    "live": {"ping_interval_s": 20.0, "ping_timeout_s": 20.0, "max_queue": 16},
    "params": {"silence_ms": 700.0},
}


class Session:
    """Writes a recording the way the bridge, the writer and the wire tap would."""

    def __init__(self, tmp_path, name: str = "r", meta: dict | None = None) -> None:
        self.rec = Recorder(tmp_path / name, META if meta is None else meta)
        self.seq = 0
        self.emit(SessionMark(t=0.0, what="start"))

    def emit(self, *events) -> Session:
        for e in events:
            self.rec.emit(e)
        return self

    def send(self, t: float, msg: str, *, app: bool = True, wire: bool = True) -> Session:
        self.seq += 1
        if app:
            self.emit(Sent(t=t, msg=msg, n_bytes=3200 if msg == "audio" else 0, seq=self.seq, stage="app"))
        if wire:
            self.emit(Sent(t=t + 0.0005, msg=msg, n_bytes=4400 if msg == "audio" else 60, seq=self.seq, stage="wire"))
        return self

    def audio(self, t0: float, t1: float, dt: float = 0.1, **kw) -> Session:
        for t in np.arange(t0, t1 + 1e-9, dt):
            self.send(round(float(t), 4), "audio", **kw)
        return self

    def server(self, t: float, msg: str, *, app: bool = True, wire: bool = True, **kw) -> Session:
        if wire:
            self.emit(Server(t=t, msg=msg, stage="wire", n_bytes=100))
        if app:
            self.emit(Server(t=t + 0.001, msg=msg, stage="app", **kw))
        return self

    def frames(self, t0: float, t1: float, dt: float = 0.02) -> Session:
        for t in np.arange(t0, t1 + 1e-9, dt):
            self.emit(Frame(t=round(float(t), 4), pts_s=round(float(t) - t0, 4), n_samples=960, rate=48_000,
                            level_db=-60.0))
        return self

    def lag(self, t0: float, t1: float, lag_ms: float = 1.0) -> Session:
        for t in np.arange(t0, t1 + 1e-9, 0.5):
            self.emit(LoopLag(t=round(float(t), 3), lag_ms=lag_ms))
        return self

    def greeting(self, wire: bool = True) -> Session:
        """setupComplete, the greeting prompt and the model's answer, read by the application."""
        self.emit(Ws(t=0.2, what="connect"))
        self.server(0.5, "setup_complete", app=False, wire=wire)
        self.send(0.6, "client_content", wire=wire)
        for t in np.arange(1.0, 2.0, 0.1):
            self.server(round(float(t), 3), "model_audio", n_samples=2400)
        return self.server(2.5, "turn_complete")

    def turn(self, start: float, end: float | None, audio_until: float) -> Session:
        """One user turn: VAD start, ActivityStart, audio, and (optionally) VAD end + ActivityEnd."""
        self.emit(Vad(t=start, decision="speech_start", reason="level", media_t=start))
        self.send(start + 0.01, "activity_start")
        self.audio(start + 0.02, audio_until)
        if end is not None:
            self.emit(Vad(t=end, decision="speech_end", reason="silence", media_t=audio_until))
            self.send(end + 0.001, "activity_end")
        return self

    def answer(self, t: float) -> Session:
        for k in range(5):
            self.server(round(t + 0.1 * k, 3), "model_audio", n_samples=2400)
        return self.server(t + 1.0, "turn_complete")

    def keepalive_close(self, t: float) -> Session:
        """What the field report shows: the client gives up, no close frame from the server."""
        self.emit(Ws(t=t, what="close", code=1011, reason="keepalive ping timeout", detail="close frame from client"))
        return self.emit(Error(t=t + 0.01, where="session",
                               message="ConnectionClosedError: sent 1011 (internal error) keepalive ping timeout"))

    def done(self, ended: bool = True) -> Recording:
        if ended:
            self.rec.close()
        return load(self.rec.dir)


def codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def one(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, (code, findings)
    return matching[0]


def healthy_session(tmp_path, name: str = "r") -> Recording:
    """Greeting, one turn; frames stop in the silence after speech (DTX) and ActivityEnd goes out on the clock."""
    s = Session(tmp_path, name).greeting()
    s.frames(3.0, 7.2).frames(12.0, 14.0).lag(0.0, 14.0)
    s.turn(4.0, 7.9, audio_until=7.2).answer(8.4)
    s.emit(Ws(t=5.0, what="ping"), Ws(t=5.01, what="pong"), Ws(t=14.0, what="ping"))  # last ping still pending
    s.emit(SessionMark(t=14.4, what="end"), Ws(t=14.5, what="close", code=1000, reason="", detail="close frame from "
                                                                                                   "client"))
    return s.done()


def failure_a(tmp_path) -> Recording:
    """ActivityEnd at 10.0, then silence from the server; ping at 20 unanswered; 1011 keepalive at 40."""
    s = Session(tmp_path).greeting().frames(3.0, 40.0).lag(0.0, 40.0)
    s.turn(5.0, 9.999, audio_until=9.9)
    s.emit(Ws(t=20.0, what="ping"))
    return s.keepalive_close(40.0).done()


def failure_b(tmp_path, gap_event: bool = False) -> Recording:
    """Speech from 7 s, audio until 38 s, frames stop at 38.1 s, no ActivityEnd; 1011 keepalive at 49.5."""
    s = Session(tmp_path).greeting().frames(3.0, 38.1).lag(0.0, 49.5)
    s.turn(7.0, None, audio_until=38.0)
    s.emit(Ws(t=9.5, what="ping"), Ws(t=9.6, what="pong"), Ws(t=29.5, what="ping"))
    if gap_event:
        s.emit(FrameGap(t=49.5, start_t=38.1, gap_s=11.4, resumed=False))
    return s.keepalive_close(49.5).done()


def receive_stopped(tmp_path) -> Recording:
    """The app's receive() ended at the greeting's turn_complete; the server's answer piles up on the wire."""
    s = Session(tmp_path).greeting().frames(3.0, 40.0).lag(0.0, 40.0)
    s.turn(4.0, 7.0, audio_until=6.3)
    for k in range(16):  # max_queue frames, then websockets stops reading the socket
        s.server(round(7.5 + 0.05 * k, 3), "model_audio", app=False)
    s.emit(Ws(t=20.0, what="ping"))
    return s.keepalive_close(40.0).done()


def test_healthy_session_is_one_finding_with_summary(tmp_path):
    findings = diagnose.diagnose(healthy_session(tmp_path))
    assert [f.code for f in findings] == ["healthy"]
    h = findings[0]
    assert h.severity == "info"
    assert "1 turn(s), 1 answered" in h.evidence
    assert "pings answered 1/1" in h.evidence
    assert "ActivityEnd still sent at 7.90 s" in h.evidence  # the DTX gap, ended on the clock


def test_failure_a_no_answer_after_activity_end(tmp_path):
    findings = diagnose.diagnose(failure_a(tmp_path))
    assert {"no_response_after_activity_end", "unanswered_pings", "close", "errors"} <= codes(findings)
    assert not {"no_activity_end", "receive_loop_idle", "loop_lag"} & codes(findings)
    nr = one(findings, "no_response_after_activity_end")
    assert nr.severity == "error" and nr.t == pytest.approx(10.0, abs=0.01)
    assert "Failure A" in nr.cause
    cl = one(findings, "close")
    assert cl.severity == "error" and "1011" in cl.title
    assert "client-side keepalive failure" in cl.cause and "server stalled" in cl.cause
    assert "ping at 20.00 s" in cl.cause and "Failure A" in cl.cause
    assert findings[0].severity == "error"  # errors sort first


def test_failure_b_no_activity_end_frames_stopped(tmp_path):
    findings = diagnose.diagnose(failure_b(tmp_path))
    assert {"no_activity_end", "frames_stopped_in_turn", "unanswered_pings", "close"} <= codes(findings)
    na = one(findings, "no_activity_end")
    assert na.t == pytest.approx(7.01, abs=0.01)
    assert "Failure B" in na.cause and "frames stopped at 38.10 s" in na.cause
    fs = one(findings, "frames_stopped_in_turn")
    assert fs.severity == "error" and "never resumed" in fs.evidence and "Failure B" in fs.cause
    cl = one(findings, "close")
    # nothing was due from the server while the turn stayed open: its pong was late, it did not stall
    assert "late pong" in cl.cause and "nothing was due" in cl.cause and "Failure B" in cl.cause
    assert "server stalled" not in cl.cause
    assert "no_response_after_activity_end" not in codes(findings)


def test_failure_b_with_frame_gap_event(tmp_path):
    fs = one(diagnose.diagnose(failure_b(tmp_path, gap_event=True)), "frames_stopped_in_turn")
    assert fs.t == pytest.approx(38.1) and "11.40 s (never resumed)" in fs.evidence


def test_receive_loop_stopped_after_turn_complete(tmp_path):
    findings = diagnose.diagnose(receive_stopped(tmp_path))
    idle = one(findings, "receive_loop_idle")
    assert idle.severity == "error" and idle.t == pytest.approx(2.501)
    assert "16 frame(s)" in idle.evidence and "max_queue=16" in idle.evidence
    assert "while True" in idle.cause
    assert "receive loop stopped" in one(findings, "no_response_after_activity_end").cause
    cl = one(findings, "close")
    assert "receive loop stopped" in cl.cause and "max_queue reached" in cl.cause
    assert "server stalled" not in cl.cause


def test_loop_blocked_names_the_loop(tmp_path):
    s = Session(tmp_path).greeting().frames(3.0, 18.0).lag(0.0, 18.0)
    s.turn(4.0, 7.0, audio_until=6.3).answer(7.5)
    s.emit(Ws(t=20.0, what="ping"), LoopLag(t=41.0, lag_ms=23_000.0))
    findings = diagnose.diagnose(s.keepalive_close(41.0).done())
    lag = one(findings, "loop_lag")
    assert lag.severity == "error" and "max 23000 ms" in lag.evidence
    assert "event loop was blocked" in one(findings, "close").cause


def test_loop_lag_warning_with_stats(tmp_path):
    s = Session(tmp_path).greeting().lag(0.0, 10.0)
    s.emit(LoopLag(t=3.3, lag_ms=150.0), LoopLag(t=4.3, lag_ms=400.0))
    lag = one(diagnose.diagnose(s.done()), "loop_lag")
    assert lag.severity == "warning"
    assert "2 of" in lag.evidence and "max 400 ms at 4.30 s" in lag.evidence and "p99" in lag.evidence


def test_audio_after_activity_end_counts_the_window(tmp_path):
    s = Session(tmp_path).greeting()
    s.turn(4.0, 9.999, audio_until=9.9)
    for dt in (0.05, 0.1, 0.2):  # the field report's 50-200 ms race
        s.send(10.0 + dt, "audio")
    s.emit(Ws(t=10.5, what="close_frame_received"),
           Ws(t=10.5, what="close", code=1007, reason="Request contains an invalid argument.",
              detail="close frame from server"))
    findings = diagnose.diagnose(s.done())
    f = one(findings, "audio_after_activity_end")
    assert "3 audio chunk(s) (wire stage) 50–200 ms after ActivityEnd at 10.00 s" in f.evidence
    cl = one(findings, "close")
    assert "invalid argument" in cl.cause and "3 audio chunk(s) were sent outside an activity" in cl.cause


def test_app_stage_used_without_wire_tap(tmp_path):
    s = Session(tmp_path).greeting(wire=False)
    s.emit(Sent(t=4.0, msg="activity_start", n_bytes=0, seq=1), Sent(t=4.1, msg="audio", n_bytes=3200, seq=2),
           Sent(t=4.5, msg="activity_end", n_bytes=0, seq=3), Sent(t=4.6, msg="audio", n_bytes=3200, seq=4))
    s.answer(5.0)
    f = one(diagnose.diagnose(s.done()), "audio_after_activity_end")
    assert "(app stage) 100–100 ms" in f.evidence


def test_audio_before_activity_start(tmp_path):
    s = Session(tmp_path).greeting().audio(3.0, 3.2).turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    f = one(diagnose.diagnose(s.done()), "audio_before_activity_start")
    assert "3 audio chunk(s)" in f.evidence and f.t == pytest.approx(3.0005)


def test_empty_activity(tmp_path):
    s = Session(tmp_path).greeting().send(5.0, "activity_start").send(5.5, "activity_end")
    findings = diagnose.diagnose(s.done())
    assert one(findings, "empty_activity").t == pytest.approx(5.0005)
    assert "empty" in one(findings, "no_response_after_activity_end").cause


def test_activity_end_without_start(tmp_path):
    s = Session(tmp_path).greeting().send(3.0, "activity_end").turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.send(9.0, "activity_end")
    f = one(diagnose.diagnose(s.done()), "activity_end_without_start")
    assert "2 ActivityEnd(s)" in f.title and "3.00 s" in f.evidence and "9.00 s" in f.evidence


def test_late_answer_is_a_warning(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(12.0)
    f = one(diagnose.diagnose(s.done(), response_timeout_s=5.0), "no_response_after_activity_end")
    assert f.severity == "warning" and "answered late" in f.title
    assert diagnose.diagnose(load(s.rec.dir), response_timeout_s=10.0)[0].code == "healthy"


def test_activity_end_that_never_left_the_socket(tmp_path):
    s = Session(tmp_path).greeting().frames(3.0, 20.0)
    s.turn(4.0, None, audio_until=6.0).send(6.7, "activity_end", wire=False)
    na = one(diagnose.diagnose(s.done()), "no_activity_end")
    assert "handed ActivityEnd to the SDK at 6.70 s but it never left the socket" in na.cause


def test_frames_stopped_then_turn_ended_only_after_they_resumed(tmp_path):
    s = Session(tmp_path).greeting().frames(3.0, 5.0).frames(8.0, 9.0)
    s.turn(4.0, 8.5, audio_until=8.4).answer(9.0)
    f = one(diagnose.diagnose(s.done()), "frames_stopped_in_turn")
    assert f.severity == "warning" and f.t == pytest.approx(5.0) and "3.00 s" in f.evidence


def test_server_internal_error_close(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.emit(Ws(t=30.0, what="close_frame_received"),
           Ws(t=30.0, what="close", code=1011, reason="Internal error encountered.", detail="close frame from server"))
    cl = one(diagnose.diagnose(s.done()), "close")
    assert cl.cause == "server internal error (1011 sent by the server)"


@pytest.mark.parametrize(("code", "words"), [(1006, "abnormal closure"), (1008, "policy violation")])
def test_other_close_codes(tmp_path, code, words):
    s = Session(tmp_path).greeting().emit(Ws(t=9.0, what="close", code=code, reason=""))
    cl = one(diagnose.diagnose(s.done()), "close")
    assert cl.severity == "error" and words in cl.cause


def test_normal_close_is_healthy(tmp_path):
    s = Session(tmp_path).greeting().emit(Ws(t=9.0, what="close", code=1000, reason="bye"))
    findings = diagnose.diagnose(s.done())
    assert [f.code for f in findings] == ["healthy"] and "close 1000 'bye'" in findings[0].evidence


def test_go_away_without_and_with_reconnect(tmp_path):
    s = Session(tmp_path, "a").greeting().server(30.0, "go_away", detail="50s")
    s.emit(Ws(t=80.0, what="close", code=1000, reason="Session time limit reached."))
    findings = diagnose.diagnose(s.done())
    f = one(findings, "go_away")
    assert f.severity == "warning" and "time left 50s" in f.evidence and "no reconnect" in f.title
    assert "after the server's goAway at 30.00 s" in one(findings, "close").cause
    s = Session(tmp_path, "b").greeting().server(30.0, "go_away", detail="50s").emit(Ws(t=31.0, what="reconnect"))
    f = one(diagnose.go_away(context(s.done())), "go_away")
    assert f.severity == "info" and "reconnected at 31.00 s" in f.evidence


def test_reconnect_that_lost_a_turn(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 10.0, audio_until=9.5)
    s.emit(Ws(t=11.0, what="close", code=1006, reason="no close frame"), Ws(t=12.0, what="reconnect"))
    s.turn(15.0, 17.0, audio_until=16.5).answer(17.5)
    findings = diagnose.diagnose(s.done())
    f = one(findings, "reconnects")
    assert f.severity == "error" and "ActivityEnd at 10.00 s unanswered" in f.evidence
    assert one(findings, "close").severity == "warning"  # the bridge came back


def test_reconnect_that_resent_the_turn(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 10.0, audio_until=9.5)
    s.emit(Ws(t=11.0, what="close", code=1006, reason="no close frame"), Ws(t=12.0, what="reconnect"))
    s.send(12.5, "activity_start").audio(12.6, 13.0).send(13.1, "activity_end").answer(13.5)
    f = one(diagnose.reconnects(context(s.done())), "reconnects")
    assert f.severity == "info" and "no user turn lost" in f.title


def test_speech_while_disconnected_is_lost(tmp_path):
    s = Session(tmp_path).greeting().emit(Ws(t=3.0, what="close", code=1006, reason="no close frame"))
    s.emit(Vad(t=4.0, decision="speech_start", reason="level"), Vad(t=6.0, decision="speech_end", reason="silence"))
    s.emit(Ws(t=9.0, what="reconnect"))
    f = one(diagnose.diagnose(s.done()), "reconnects")
    assert "speech at 4.00 s never reached a connection" in f.evidence


def test_errors_grouped(tmp_path):
    s = Session(tmp_path).greeting()
    s.emit(Error(t=3.0, where="writer", message="boom"), Error(t=4.0, where="writer", message="boom"))
    f = one(diagnose.diagnose(s.done()), "errors")
    assert f.evidence.startswith("2× in writer, first at 3.00 s")


def test_cut_short(tmp_path):
    s = Session(tmp_path).greeting()
    f = one(diagnose.diagnose(s.done(ended=False)), "cut_short")
    assert f.title == "recording was cut short (process killed?) after t=2.50 s"


def test_watchdog(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.emit(Watchdog(t=11.0, after_s=5.0, action="resend_activity_end")).answer(11.5)
    f = one(diagnose.diagnose(s.done()), "watchdog")
    assert "no response 5 s after ActivityEnd; action: resend_activity_end" in f.evidence
    assert "a response followed at 11.50 s" in f.evidence


def test_watchdog_on_a_later_turn_looks_for_the_response_after_that_turn(tmp_path):
    """The window runs from the firing to the next ActivityStart after the turn on the wire then; it was bounded by
    the first activity's next start (9.01 s here), which hid the response at 21.5 s."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.turn(9.0, 11.0, audio_until=10.5).answer(11.5).turn(14.0, 16.0, audio_until=15.5)
    s.emit(Watchdog(t=21.0, after_s=5.0, action="reconnect and re-send turn 3")).answer(21.5)
    f = one(diagnose.diagnose(s.done()), "watchdog")
    assert "a response followed at 21.50 s" in f.evidence and f.cause is None


def test_pending_ping_at_session_end_is_not_unanswered(tmp_path):
    s = Session(tmp_path).greeting().emit(Ws(t=9.0, what="ping"), SessionMark(t=10.0, what="end"))
    assert diagnose.diagnose(s.done())[0].code == "healthy"


def test_bad_arguments(tmp_path):
    rec = healthy_session(tmp_path)
    with pytest.raises(ValueError, match="response timeout"):
        diagnose.diagnose(rec, response_timeout_s=0)


def test_format_findings(tmp_path):
    text = format_findings(diagnose.diagnose(failure_a(tmp_path)))
    assert "ERROR   no_response_after_activity_end  t=10.00s" in text
    assert "likely cause:" in text and text.splitlines()[-1].startswith("4 error(s)")


def test_registered_subcommand(tmp_path, monkeypatch, capsys):
    healthy_session(tmp_path, "ok")
    failure_a(tmp_path / "x")
    monkeypatch.setattr(cli, "PLUGGED", ())  # diagnose is the CLI's own; no plugged module is needed
    assert cli.main(["diagnose", str(tmp_path / "ok")]) == 0
    assert "healthy" in capsys.readouterr().out
    assert cli.main(["diagnose", str(tmp_path / "x" / "r"), "--format", "json", "--response-timeout", "3"]) == 1
    assert "no_response_after_activity_end" in {d["code"] for d in json.loads(capsys.readouterr().out)}
    assert cli.main(["diagnose", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("workbench: error: ")
    ap = cli.build_parser()
    assert ap.parse_args(["diagnose", "R", "--format", "json"]).format == "json"


def test_module_entry_point(tmp_path):
    healthy_session(tmp_path, "ok")
    failure_b(tmp_path / "b")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workbench", "diagnose", *args], capture_output=True,
                              text=True, timeout=60)

    ok = run(str(tmp_path / "ok"))
    assert ok.returncode == 0 and "healthy session" in ok.stdout
    bad = run(str(tmp_path / "b" / "r"), "--format", "json")
    assert bad.returncode == 1 and "no_activity_end" in {d["code"] for d in json.loads(bad.stdout)}
    missing = run(str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("workbench: error: ") and "not a recording directory" in missing.stderr


def test_unanswered_turn_recovered_by_a_resend_is_a_warning(tmp_path):
    """Failure A survived: the original ActivityEnd stays on record, as a warning naming the answer."""
    from workbench.store.recording import Recorder, load

    rec = Recorder(tmp_path / "r", {"params": {"silence_ms": 700}, "live": {"ping_timeout_s": 20}})
    for e in [
        Ws(t=0.1, what="connect", detail="conn 1"),
        Sent(t=1.0, msg="activity_start", n_bytes=0, seq=1, stage="wire"),
        Sent(t=1.1, msg="audio", n_bytes=640, seq=2, stage="wire"),
        Sent(t=2.0, msg="activity_end", n_bytes=0, seq=3, stage="wire"),
        Watchdog(t=7.0, after_s=5.0, action="reconnect and re-send turn 1"),
        Ws(t=7.1, what="reconnect", detail="conn 1: watchdog"),
        Ws(t=7.2, what="connect", detail="conn 2, resumed with handle h"),
        SessionMark(t=7.2, what="resend", detail="conn 2: 3 message(s) of unanswered turn(s) [1]"),
        Client(t=7.2, action="resend", reason="not_in_handle", conn=2, turn=1, attempt=2),  # what the bridge writes
        Sent(t=7.3, msg="activity_start", n_bytes=0, seq=4, stage="wire"),
        Sent(t=7.3, msg="audio", n_bytes=640, seq=5, stage="wire"),
        Sent(t=7.4, msg="activity_end", n_bytes=0, seq=6, stage="wire"),
        Server(t=7.6, msg="model_audio", stage="app"),
        Server(t=8.0, msg="turn_complete", stage="app"),
    ]:
        rec.emit(e)
    rec.close()
    findings = diagnose.diagnose(load(tmp_path / "r"))
    found = [f for f in findings if f.code == "no_response_after_activity_end"]
    assert len(found) == 1 and found[0].severity == "warning" and "8.00 s" in found[0].evidence
    # the watchdog's finding says the same, not "no response followed" (the answer came on the new connection)
    wd = one(findings, "watchdog")
    assert "the re-sent turn was answered at 8.00 s" in wd.evidence and wd.cause is None


# -- keepalive: the four causes of 1011 keepalive ping timeout, and no false alarm --------------------------------


def test_server_close_just_after_a_ping_is_not_an_unanswered_ping(tmp_path):
    """Seen live: the server closed 1011 1 ms after the client's ping; the next connection's pong is not its pong."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.emit(Ws(t=20.0, what="ping", conn=1), Ws(t=20.001, what="close_frame_received", conn=1),
           Ws(t=20.002, what="close", code=1011, reason="Internal error encountered.", conn=1, closed_by="server",
              detail="conn 1: close frame from server (echoed)"),
           Ws(t=20.5, what="reconnect", detail="conn 1: closed"), Ws(t=20.8, what="connect", detail="conn 2"),
           Ws(t=40.0, what="ping", conn=2), Ws(t=40.01, what="pong", conn=2, latency_ms=10.0))
    findings = diagnose.diagnose(s.done())
    assert "unanswered_pings" not in codes(findings)
    cl = one(findings, "close")
    assert cl.cause.startswith("server internal error (1011 sent by the server)")
    assert "keepalive ping sent 2 ms before the close was still in flight" in cl.cause
    assert "keepalive" not in cl.title


def test_client_1011_echoed_by_the_server_is_the_clients(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.emit(Ws(t=9.0, what="close_frame_received", conn=1),
           Ws(t=9.0, what="close", code=1011, reason="", conn=1, closed_by="client",
              detail="conn 1: close frame from client (echoed)"))
    cl = one(diagnose.diagnose(s.done()), "close")
    assert "sent by the client" in cl.cause and "by the server" not in cl.cause


def test_late_pongs_without_ping_timeout_are_information(tmp_path):
    meta = {**META, "live": {"ping_interval_s": 20.0, "ping_timeout_s": None, "max_queue": 16}}
    s = Session(tmp_path, meta=meta).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.emit(Ws(t=3.0, what="ping", conn=1), Ws(t=23.0, what="ping", conn=1),
           Ws(t=30.0, what="pong", conn=1, latency_ms=27_000.0), Ws(t=41.0, what="pong", conn=1, latency_ms=18_000.0),
           SessionMark(t=42.0, what="end"))
    findings = diagnose.diagnose(s.done())
    assert [f.code for f in findings] == ["healthy"]
    assert "pong delays 18.0–27.0 s" in findings[0].evidence and "ping_timeout=None" in findings[0].evidence
    assert "pings answered 2/2" in findings[0].evidence


def test_late_pong_while_frames_kept_coming_blames_the_keepalive_setting(tmp_path):
    """(a): the server kept sending (resumption updates) and the app read them; only the pong was late."""
    s = Session(tmp_path).greeting().frames(3.0, 31.0).lag(0.0, 31.0)
    s.turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    for t in range(8, 31):
        s.server(float(t), "session_resumption_update")
    s.emit(Ws(t=10.0, what="ping", conn=1))
    findings = diagnose.diagnose(s.keepalive_close(30.0).done())
    cl = one(findings, "close")
    assert "late pong" in cl.cause and "kept sending frames after the ping" in cl.cause
    assert "ping_interval=None" in cl.cause and "stalled" not in cl.cause.replace("not stalled", "")
    assert "late pong" in one(findings, "unanswered_pings").cause


def test_keepalive_causes_are_told_apart(tmp_path):
    """One recording per cause, and the enum each verdict gives."""
    K = diagnose.KeepaliveCause
    got = {}
    for name, rec in [("a", failure_b(tmp_path / "a")), ("b", receive_stopped(tmp_path / "b")),
                      ("d", failure_a(tmp_path / "d"))]:
        c = context(rec)
        (p,) = [p for p in _pings(c) if p.outcome is diagnose.PingOutcome.UNANSWERED]
        got[name] = _why_unanswered(c, p)[0]
    assert got == {"a": K.LATE_PONG, "b": K.RECEIVE_STOPPED, "d": K.STALL}


def test_activity_end_after_the_socket_closed_is_blamed_on_the_close(tmp_path):
    """The turn ended after the server had closed the socket: the send path did nothing wrong."""
    s = Session(tmp_path).greeting().frames(3.0, 12.0)
    s.turn(4.0, None, audio_until=7.0)
    s.emit(Ws(t=7.5, what="close_frame_received", conn=1),
           Ws(t=7.5, what="close", code=1011, reason="Internal error encountered.", conn=1, closed_by="server"),
           Vad(t=8.2, decision="speech_end", reason="silence", media_t=7.0),
           Sent(t=8.2, msg="activity_end", n_bytes=0, seq=999, stage="app"),
           Error(t=8.21, where="writer", message="ConnectionClosedError: received 1011"))
    na = one(diagnose.diagnose(s.done()), "no_activity_end")
    assert "the connection closed at 7.50 s (1011 'Internal error encountered.', closed by server)" in na.cause
    assert "not the send path" in na.cause and "lost it" not in na.cause


# -- the new findings of issue 12 -----------------------------------------------------------------------------------


def test_barge_in_is_a_note_not_an_error(tmp_path):
    """START_OF_ACTIVITY_INTERRUPTS: the next ActivityStart stops the answer (turnComplete, no generationComplete)."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    for k in range(3):
        s.server(6.5 + 0.1 * k, "model_audio", n_samples=2400)
    s.turn(7.0, 9.0, audio_until=8.5)
    s.server(7.05, "interrupted").server(7.06, "tool_call_cancellation").server(7.1, "turn_complete")
    s.answer(9.5)
    findings = diagnose.diagnose(s.done())
    assert [f.code for f in findings] == ["healthy"]
    note = one(diagnose.barge_in(context(load(s.rec.dir))), "barge_in")
    assert note.severity == "info" and note.t == pytest.approx(7.051)
    assert "by the ActivityStart at 7.01 s" in note.evidence and "answer audio since 6.50 s" in note.evidence
    assert "turnComplete at 7.10 s without generationComplete" in note.evidence
    assert "1 tool call cancellation(s)" in note.evidence


def test_heard_but_not_answered(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.server(6.3, "input_transcription", text="tell me about your last job")
    findings = diagnose.diagnose(s.emit(SessionMark(t=20.0, what="end")).done())
    f = one(findings, "heard_not_answered")
    assert f.severity == "error" and f.t == pytest.approx(6.0015)
    assert "'tell me about your last job' at 6.30 s" in f.evidence and "no-response 'heard'" in f.cause
    assert "no_response_after_activity_end" not in codes(findings)


def test_never_heard_is_said_when_other_turns_were_transcribed(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.server(6.2, "input_transcription", text="hello").answer(6.5)
    s.turn(10.0, 12.0, audio_until=11.5).emit(SessionMark(t=25.0, what="end"))
    findings = diagnose.diagnose(s.done())
    f = one(findings, "no_response_after_activity_end")
    assert f.t == pytest.approx(12.0015) and "never heard: no inputTranscription for this activity" in f.evidence
    assert "heard_not_answered" not in codes(findings)


def test_empty_answer(tmp_path):
    """python-genai #2117: a turnComplete with nothing in it; the old rules counted it as an answer."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.server(6.2, "input_transcription", text="hello").server(6.6, "turn_complete")
    findings = diagnose.diagnose(s.done())
    f = one(findings, "empty_answer")
    assert f.severity == "error" and "turnComplete at 6.60 s" in f.evidence and "'hello' at 6.20 s" in f.evidence
    assert "#2117" in f.cause
    assert not {"no_response_after_activity_end", "heard_not_answered"} & codes(findings)


def test_late_answer_with_a_repeated_transcript(tmp_path):
    """gemini-live-api-examples #48: transcript, a long gap, the same transcript again, then the answer."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.server(6.2, "input_transcription", text="hello").server(40.0, "input_transcription", text="hello")
    f = one(diagnose.diagnose(s.answer(40.5).done()), "no_response_after_activity_end")
    assert f.severity == "warning" and "answered late" in f.title and "34.5 s after" in f.evidence
    assert "the same transcript came again at 40.00 s" in f.evidence


def test_late_answer_masks_failure_a_on_the_next_turn(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    s.server(6.2, "input_transcription", text="first question")
    s.turn(20.0, 22.0, audio_until=21.5)
    s.server(22.3, "input_transcription", text="first question").answer(22.5)
    findings = diagnose.diagnose(s.emit(SessionMark(t=30.0, what="end")).done())
    f = one(findings, "late_answer_masks_next_turn")
    assert f.severity == "error" and f.t == pytest.approx(22.0015)
    assert "the turnComplete at 23.50 s, 17.5 s after its ActivityEnd, paid it" in f.evidence
    assert "got none" in f.evidence
    assert "transcript came again at 22.30 s" in f.evidence
    assert one(findings, "heard_not_answered").t == pytest.approx(6.0015)  # the first turn, on its own window


def test_two_answers_for_two_turns_mask_nothing(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).turn(7.0, 9.0, audio_until=8.5)
    s.answer(9.2).answer(11.0)
    assert "late_answer_masks_next_turn" not in codes(diagnose.diagnose(s.done()))


def test_resume_rejected_while_the_old_connection_was_open(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.emit(Ws(t=10.0, what="reconnect", detail="conn 1: goAway"),
           Ws(t=10.2, what="connect", detail="conn 2, resumed with handle h1"),
           Ws(t=10.3, what="close", code=1011, reason="Internal error encountered.", conn=2, closed_by="server"),
           Ws(t=11.0, what="close", code=1000, reason="", conn=1, closed_by="client"),
           Ws(t=11.5, what="connect", detail="conn 3, resumed with handle h1"))
    f = one(diagnose.diagnose(s.done()), "resume_rejected")
    assert f.severity == "warning" and "resumed at 10.20 s with handle h1" in f.evidence
    assert "still open" in f.evidence and "close the old socket first" in f.cause


def test_resume_rejected_from_the_client_core_and_the_emulator_log(tmp_path):
    s = Session(tmp_path).greeting()
    s.emit(Client(t=10.3, action="give_up", reason="resume_rejected", conn=2))
    s.rec.close(gave_up={"reason": "resume_rejected", "detail": "1011 on every resume"})
    (s.rec.dir / "emulator.jsonl").write_text(
        '{"t": 10.25, "conn": 2, "direction": "in", "kind": "resume_rejected", '
        '"detail": "h1: connection(s) [1] open"}\n'
        "not json\n")
    findings = diagnose.diagnose(load(s.rec.dir))
    f = one(findings, "resume_rejected")
    assert f.severity == "error" and "the emulator rejected the resume (h1: connection(s) [1] open)" in f.evidence
    assert "give_up/resume_rejected on conn 2" in f.evidence
    g = one(findings, "gave_up")
    assert g.title == "the bridge gave up: resume_rejected" and g.t == pytest.approx(10.3)


def test_gave_up_from_session_json_alone(tmp_path):
    s = Session(tmp_path).greeting()
    s.rec.close(gave_up={"reason": "reconnect_limit", "detail": "3 attempts"})
    g = one(diagnose.diagnose(load(s.rec.dir)), "gave_up")
    assert g.severity == "error" and g.evidence == "give_up (reconnect_limit): 3 attempts"
    assert "every reconnect attempt failed" in g.cause


def test_lost_turn_after_resuming_an_older_snapshot(tmp_path):
    s = Session(tmp_path).greeting()
    s.server(3.0, "session_resumption_update", detail="resumable=True handle=h1")
    s.turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.server(7.2, "session_resumption_update", detail="resumable=False handle=None")
    s.emit(Ws(t=9.0, what="close", code=1011, reason="Deadline expired before operation could complete.", conn=1,
              closed_by="server"),
           Ws(t=9.1, what="reconnect", detail="conn 1: closed"),
           Ws(t=9.3, what="connect", detail="conn 2, resumed with handle h1"))
    findings = diagnose.diagnose(s.done())
    f = one(findings, "lost_turn")
    assert "resumed at 9.30 s with handle h1 from 3.00 s" in f.evidence
    assert "turn 1's ActivityEnd at 6.00 s" in f.evidence
    assert "goAway by age" in one(findings, "close").cause


def test_duplicate_turn_from_a_resend_of_an_answered_turn(tmp_path):
    """The snapshot the bridge resumed from (h2, issued after the answer) holds the turn: re-sending doubles it."""
    s = Session(tmp_path).greeting().server(3.0, "session_resumption_update", detail="resumable=True handle=h1")
    s.turn(4.0, 6.0, audio_until=5.5).answer(6.5)
    s.server(8.0, "session_resumption_update", detail="resumable=True handle=h2")
    s.emit(Ws(t=9.0, what="reconnect", detail="conn 1: closed"),
           Ws(t=9.2, what="connect", detail="conn 2, resumed with handle h2"),
           Client(t=9.2, action="resend", reason="closed", conn=2, turn=1, attempt=2))
    s.send(9.3, "activity_start").audio(9.4, 9.6).send(9.7, "activity_end").answer(10.0)
    f = one(diagnose.diagnose(s.done()), "duplicate_turn")
    assert "turn 1 first sent on conn 1 at 4.01 s was answered at 7.50 s" in f.evidence
    assert "resumed at 9.20 s with handle h2 from 8.00 s" in f.evidence


def test_resend_of_a_turn_the_snapshot_does_not_hold_is_no_duplicate(tmp_path):
    """Seen live (no-response:heard): the handle predates the turn, so the re-send is what keeps it."""
    s = Session(tmp_path).greeting().server(3.0, "session_resumption_update", detail="resumable=True handle=h1")
    s.turn(4.0, 6.0, audio_until=5.5).server(6.2, "input_transcription", text="hello")
    s.emit(Ws(t=26.0, what="reconnect", detail="conn 1"),
           Ws(t=26.2, what="connect", detail="conn 2, resumed with handle h1"),
           Client(t=26.2, action="resend", reason="not_in_handle", conn=2, turn=1, attempt=2))
    s.send(26.3, "activity_start").audio(26.4, 26.6).send(26.7, "activity_end").answer(27.0)
    findings = diagnose.diagnose(s.done())
    assert not {"duplicate_turn", "lost_turn"} & codes(findings)
    assert one(findings, "heard_not_answered").severity == "warning"  # recovered by the re-send


def test_duplicate_and_lost_turns_from_the_emulator_log(tmp_path):
    rec = healthy_session(tmp_path)
    (rec.path / "emulator.jsonl").write_text(
        '{"t": 9.0, "conn": 2, "direction": "violation", "kind": "duplicate_turn", "detail": "user turn 2 twice"}\n'
        '{"t": 9.5, "conn": 2, "direction": "violation", "kind": "lost_turn", "detail": "user turn 1 gone"}\n')
    findings = diagnose.diagnose(load(rec.path))
    assert "user turn 2 twice" in one(findings, "duplicate_turn").evidence
    assert "user turn 1 gone" in one(findings, "lost_turn").evidence


def test_the_emulators_own_account_is_evidence(tmp_path):
    """emulator.jsonl beside the recording: a noise activity left unanswered, a latency spike on a late answer."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).turn(10.0, 12.0, audio_until=11.5)
    rec = s.answer(19.0).done()
    (rec.path / "emulator.jsonl").write_text(
        '{"t": 6.0, "conn": 0, "direction": "out", "kind": "fault", '
        '"detail": "no-response:noise: user turn 1 is not speech (-60 dBFS)"}\n'
        '{"t": 12.0, "conn": 0, "direction": "out", "kind": "latency_spike", "detail": "7.000 s"}\n')
    found = [f for f in diagnose.diagnose(load(rec.path)) if f.code == "no_response_after_activity_end"]
    noise, late = sorted(found, key=lambda f: f.t)
    assert "the emulator's log: fault no-response:noise: user turn 1" in noise.evidence
    assert "took the activity for noise" in noise.cause
    assert "answered late" in late.title and "the emulator's log: latency_spike 7.000 s" in late.evidence


@pytest.mark.parametrize(("reason", "words"), [
    ("models/nope is not found for API version v1beta, or is not supported for bidiGenerateContent", "model name"),
    ("Invalid session resumption handle.", "refused the resumption handle"),
])
def test_strict_input_1008_closes_are_named(tmp_path, reason, words):
    s = Session(tmp_path).greeting()
    s.emit(Ws(t=3.0, what="close", code=1008, reason=reason, conn=1, closed_by="server"))
    cl = one(diagnose.diagnose(s.done()), "close")
    assert cl.severity == "error" and words in cl.cause


def test_a_turn_complete_owed_by_the_previous_answer_is_not_an_empty_answer(tmp_path):
    """turnComplete waits for playback (livekit/agents #6421): the last answer's can land after the next turn."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    for k in range(5):
        s.server(round(6.5 + 0.1 * k, 3), "model_audio", n_samples=2400)
    s.turn(7.5, 9.0, audio_until=8.5).server(9.2, "turn_complete").answer(9.6)
    findings = diagnose.diagnose(s.done())
    assert "empty_answer" not in codes(findings) and [f.code for f in findings] == ["healthy"]


# -- regressions seen on the real profile (tests/test_recovery.py's sessions, diagnosed) ----------------------------


def test_answers_interrupted_by_each_next_turn_mask_nothing(tmp_path):
    """Barge-in: each answer's turnComplete comes after the next ActivityStart, yet every turn has its own."""
    s = Session(tmp_path).greeting()
    for start, end in ((4.0, 6.0), (9.0, 11.0), (14.0, 16.0)):
        s.turn(start, end, audio_until=end - 0.5)
        for k in range(3):
            s.server(round(end + 0.5 + 0.1 * k, 3), "model_audio", n_samples=2400)
        if start < 14.0:
            s.server(end + 3.02, "interrupted").server(end + 3.03, "turn_complete")  # at the next ActivityStart
    s.server(18.0, "turn_complete")
    findings = diagnose.diagnose(s.done())
    assert "late_answer_masks_next_turn" not in codes(findings), findings
    assert len([f for f in diagnose.barge_in(context(load(s.rec.dir)))]) == 2


def test_a_turn_re_sent_back_to_back_is_heard_after_the_next_activity_start(tmp_path):
    """A re-send writes turn 1 whole, then opens turn 2 at once: turn 1's transcript lands in turn 2's start."""
    s = Session(tmp_path).greeting()
    s.send(4.0, "activity_start").audio(4.01, 4.02).send(4.03, "activity_end").send(4.04, "activity_start")
    s.server(4.25, "input_transcription", text="turn one").audio(4.1, 6.0).send(6.5, "activity_end")
    s.server(6.7, "input_transcription", text="turn two").emit(SessionMark(t=20.0, what="end"))
    findings = diagnose.diagnose(s.done())
    first = [f for f in findings if f.t is not None and abs(f.t - 4.0305) < 0.01]
    assert [f.code for f in first] == ["heard_not_answered"] and "'turn one' at 4.25 s" in first[0].evidence


def test_a_turn_re_sent_after_several_rejected_resumes_is_not_lost(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5)
    for k, t in enumerate((9.0, 10.0, 11.0), start=2):
        s.emit(Ws(t=t, what="reconnect", detail=f"conn {k - 1}"), Ws(t=t + 0.1, what="connect", detail=f"conn {k}"))
    # the user starts the next turn while the resumes are rejected: the re-send comes after that speech
    s.emit(Vad(t=9.5, decision="speech_start", reason="level", media_t=9.5))
    s.emit(Client(t=11.1, action="resend", reason="closed", conn=4, turn=1, attempt=2))
    s.send(11.2, "activity_start").audio(11.3, 11.5).send(11.6, "activity_end").answer(12.0)
    f = one(diagnose.diagnose(s.done()), "reconnects")
    assert f.severity == "info" and "no user turn lost" in f.title


def test_frames_stopping_in_a_turn_cut_by_a_reconnect_are_not_failure_b(tmp_path):
    s = Session(tmp_path).greeting().frames(3.0, 7.0)
    s.emit(Vad(t=4.0, decision="speech_start", reason="level", media_t=4.0))
    s.send(4.01, "activity_start").audio(4.02, 7.0)
    s.emit(Ws(t=9.0, what="reconnect", detail="conn 1"), Ws(t=9.1, what="connect", detail="conn 2"))
    s.send(9.2, "setup").send(9.3, "activity_start").audio(9.31, 9.4)
    s.emit(Vad(t=9.5, decision="speech_end", reason="silence", media_t=7.0)).send(9.5, "activity_end").answer(10.0)
    findings = diagnose.diagnose(s.done())
    assert not [f for f in findings if f.code == "frames_stopped_in_turn" and f.severity == "error"], findings


def test_a_turn_open_when_the_bridge_gave_up_is_blamed_on_the_close(tmp_path):
    s = Session(tmp_path).greeting().frames(3.0, 23.8)
    s.turn(22.4, None, audio_until=23.7)
    s.emit(Client(t=23.72, action="give_up", reason="resend_limit", conn=3, turn=1),
           Ws(t=23.73, what="close", code=1000, reason="", conn=1, closed_by="client"))
    findings = diagnose.diagnose(s.done())
    na = one(findings, "no_activity_end")
    assert na.severity == "warning" and "while the user was still speaking" in na.cause
    assert one(findings, "gave_up").severity == "error"


def test_a_failed_reconnect_attempt_the_bridge_got_past_is_a_warning(tmp_path):
    s = Session(tmp_path).greeting()
    s.emit(Ws(t=5.0, what="reconnect", detail="conn 1"),
           Error(t=5.2, where="reconnect", message="conn 2: APIError: 1011 None. Internal error encountered."),
           Ws(t=6.0, what="connect", detail="conn 3"))
    f = one(diagnose.diagnose(s.done()), "errors")
    assert f.severity == "warning" and "connected again at 6.00 s" in f.evidence


def test_a_close_followed_by_a_connect_retry_is_recovered(tmp_path):
    """The client core retries one reconnect without a new reconnect mark: the later connect still counts."""
    s = Session(tmp_path).greeting().emit(
        Ws(t=5.0, what="reconnect", detail="conn 1"), Ws(t=5.1, what="connect", detail="conn 2, resumed with handle h"),
        Ws(t=5.2, what="close", code=1011, reason="Internal error encountered.", conn=2, closed_by="server"),
        Ws(t=5.6, what="connect", detail="conn 3, resumed with handle h"))
    cl = [f for f in diagnose.diagnose(s.done()) if f.code == "close"]
    assert [f.severity for f in cl] == ["warning"] and "the bridge reconnected at 5.60 s" in cl[0].cause


def test_a_skipped_turn_and_an_answered_next_one_is_failure_a_not_a_mask(tmp_path):
    """In-order pairing alone would give the next turn's answer to the skipped one: no evidence, no mask."""
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).turn(20.0, 22.0, audio_until=21.5)
    findings = diagnose.diagnose(s.answer(22.5).emit(SessionMark(t=30.0, what="end")).done())
    assert "late_answer_masks_next_turn" not in codes(findings)
    assert one(findings, "no_response_after_activity_end").t == pytest.approx(6.0015)


def test_a_late_answer_that_began_while_the_next_turn_was_spoken_masks_it(tmp_path):
    s = Session(tmp_path).greeting().turn(4.0, 6.0, audio_until=5.5).turn(20.0, 24.0, audio_until=23.5)
    for k in range(5):  # audio while the user still speaks; its turnComplete waits for playback, after the turn
        s.server(round(23.0 + 0.1 * k, 3), "model_audio", n_samples=2400)
    s.server(24.5, "turn_complete")
    f = one(diagnose.diagnose(s.emit(SessionMark(t=35.0, what="end")).done()), "late_answer_masks_next_turn")
    assert "the turn ending 24.00 s got none" in f.evidence


def test_frames_delayed_not_silent_are_no_failure_b(tmp_path):
    """A busy loop delivers 2 s of frames late, their media time continuous: the detector was right to wait."""
    s = Session(tmp_path).greeting()
    for k in range(int(4.0 / 0.02)):  # media 0-4 s; the frames of media 1-3 s arrive in a burst at 3.0 s
        media = k * 0.02
        t = 3.0 + media if media < 1.0 else (6.0 + 0.001 * k if media < 3.0 else 3.0 + media + 3.0)
        s.emit(Frame(t=round(t, 4), pts_s=round(media, 4), n_samples=960, rate=48_000, level_db=-20.0))
    s.turn(3.05, 10.5, audio_until=10.0).answer(11.0)
    rec = s.done()
    assert [f.code for f in diagnose.diagnose(rec)] == ["healthy"]
    (f,) = [f for f in diagnose.frames_stopped_in_turn(context(rec)) if f.t == pytest.approx(3.98)]
    assert f.severity == "info" and "delayed" in f.evidence and "continues 20 ms of media time later" in f.evidence
