"""The one walker over a recording's activities, on small synthetic recordings with exact times.

The same session is written twice: as the bridge writes it now (app-stage sends carry ``conn``, ``turn`` and
``attempt``) and as older recordings have it (no such fields: the walker infers them from the client core's
``resend`` events and the connection starts).  Both must give the turns, attempts and answers of the session.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.analysis import diagnose
from workbench.analysis.activities import activities, connection_starts, walk
from workbench.analysis.tables import turn_table
from workbench.core.events import Client, Sent, Server, Vad, Watchdog, Ws
from workbench.store.recording import Recorder, Recording, load

WIRE_LAG_S = 0.0005  # the wire tap's record follows the app's


class Bridge:
    """Writes what the bridge, its writer and the wire tap write; ``fields=False``: as before Sent had them."""

    def __init__(self, tmp_path, fields: bool, name: str = "r") -> None:
        self.rec = Recorder(tmp_path / name, {"live": {"ping_timeout_s": None}, "params": {"silence_ms": 700.0}})
        self.fields = fields
        self.seq = 0

    def emit(self, *events) -> Bridge:
        for e in events:
            self.rec.emit(e)
        return self

    def send(self, t: float, msg: str, conn: int, turn: int | None, attempt: int | None) -> Bridge:
        self.seq += 1
        tags = dict(conn=conn, turn=turn, attempt=attempt) if self.fields else {}
        n_samples = 1600 if msg == "audio" else None
        self.emit(Sent(t=t, msg=msg, n_bytes=0, seq=self.seq, stage="app", n_samples=n_samples, **tags),
                  Sent(t=round(t + WIRE_LAG_S, 6), msg=msg, n_bytes=60, seq=self.seq, stage="wire"))
        return self

    def activity(self, conn: int, turn: int, attempt: int, start: float, audio: list[float],
                 end: float | None) -> Bridge:
        self.send(start, "activity_start", conn, turn, attempt)
        for t in audio:
            self.send(t, "audio", conn, turn, attempt)
        if end is not None:
            self.send(end, "activity_end", conn, turn, attempt)
        return self

    def answer(self, audio_t: float, complete_t: float) -> Bridge:
        return self.emit(Server(t=audio_t, msg="model_audio", stage="app"),
                         Server(t=complete_t, msg="turn_complete", stage="app"))

    def done(self) -> Recording:
        self.rec.close()
        return load(self.rec.dir)


def reconnect_session(tmp_path, fields: bool) -> Recording:
    """Three turns on conn 1; turn 2 unanswered, turn 3 cut by a watchdog reconnect at 9.0; on conn 2 the
    client core re-sends turns 2 and 3 back to back, and both are answered there."""
    b = Bridge(tmp_path, fields, "new" if fields else "old")
    b.emit(Ws(t=0.1, what="connect", detail="conn 1"))
    b.send(0.5, "client_content", 1, 0, 1).answer(1.0, 1.5)  # the greeting: a text turn, no activity
    for s, e in [(1.9, 2.9), (4.9, 5.9), (6.9, None)]:
        b.emit(Vad(t=s, decision="speech_start", reason="level", media_t=s - 0.3))
        if e is not None:
            b.emit(Vad(t=e, decision="speech_end", reason="silence", media_t=e - 0.7))
    b.activity(1, 1, 1, 2.0, [2.1, 2.2], 3.0).answer(3.4, 3.9)
    b.activity(1, 2, 1, 5.0, [5.1], 6.0)  # never answered on conn 1
    b.activity(1, 3, 1, 7.0, [7.1], None)  # still open when the connection is replaced
    b.emit(Watchdog(t=9.0, after_s=3.0, action="reconnect and re-send turn 2"),
           Client(t=9.0, action="reconnect", reason="watchdog", conn=2, turn=2),
           Ws(t=9.0, what="reconnect", detail="conn 1"),
           Ws(t=9.3, what="connect", detail="conn 2, resumed with handle h1"),
           Client(t=9.3, action="resend", reason="not_in_handle", conn=2, turn=2, attempt=2, handle="h1"),
           Client(t=9.3, action="resend", reason="not_in_handle", conn=2, turn=3, attempt=2, handle="h1"))
    b.activity(2, 2, 2, 9.31, [9.32], 9.33)
    b.activity(2, 3, 2, 9.34, [9.35, 9.4], None)
    b.emit(Vad(t=10.0, decision="speech_end", reason="silence", media_t=9.3))
    b.send(10.0, "activity_end", 2, 3, 2)
    b.answer(9.6, 9.9).answer(10.3, 10.8)
    return b.done()


def labels(rec: Recording) -> list[tuple[int, int, int]]:
    return [(a.turn, a.attempt, a.conn) for a in activities(rec)]


@pytest.mark.parametrize("fields", [True, False], ids=["fields", "old-format"])
def test_reconnect_with_re_sent_turns(tmp_path, fields):
    rec = reconnect_session(tmp_path, fields)
    w = walk(rec)
    assert w.wire and w.connects == (0.1, 9.0) and w.orphan_ends == () and w.stray_audio == ()
    assert labels(rec) == [(1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 2), (3, 2, 2)]
    a = w.activities
    assert [x.start_t for x in a] == [2.0005, 5.0005, 7.0005, 9.3105, 9.3405]
    assert [x.end_t for x in a] == [3.0005, 6.0005, None, 9.3305, 10.0005]
    assert [x.cut_t for x in a] == [None, None, 9.0, None, None]
    assert [x.next_start_t for x in a] == [5.0005, 7.0005, 9.3105, 9.3405, math.inf]
    assert [x.n_audio for x in a] == [2, 1, 1, 1, 2]
    assert (a[0].audio_sent_from_t, a[0].audio_sent_until_t) == (2.1005, 2.2005)
    # answers stay on their connection: turn 2's first attempt does not take the answer its re-send got
    assert [x.first_audio_t for x in a] == [3.4, None, None, 9.6, 10.3]
    assert [x.turn_complete_t for x in a] == [3.9, None, None, 9.9, 10.8]
    assert [x.answered for x in a] == [True, False, False, True, True]
    assert w.resent_answer(a[1]) == 9.9 and w.resent_answer(a[0]) is None
    assert w.later_attempts(a[2]) == [a[4]] and w.later_answer(a[2]) == 10.8
    tt = turn_table(rec)
    assert list(tt["speech_start"]) == pytest.approx([1.6, 4.6, 6.6, 4.6, 6.6])
    assert list(tt["end_to_complete_ms"].round(1).fillna(-1)) == [899.5, -1, -1, 569.5, 799.5]
    audio_s = [x.audio_s for x in a]
    if fields:  # each audio send is filed under its (turn, attempt): exact
        assert audio_s == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.2])
    else:  # the documented fallback, as the turn table always counted: a window from 50 ms before the start,
        # which for a re-send right behind another also takes the other's last chunk (9.32 s)
        assert audio_s == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.3])


def test_old_format_gives_the_same_table_as_the_fields(tmp_path):
    new, old = reconnect_session(tmp_path, True), reconnect_session(tmp_path, False)
    assert "turn" in new.of_kind("send") and "turn" not in old.of_kind("send")
    a, b = turn_table(new).drop(columns="audio_s"), turn_table(old).drop(columns="audio_s")
    assert a.equals(b)
    assert [f.code for f in diagnose.diagnose(new)] == [f.code for f in diagnose.diagnose(old)]


def test_a_failed_connect_attempt_keeps_the_bridges_connection_number(tmp_path):
    """The bridge numbers every connect attempt (Client.conn): a resume rejected once makes the next conn 3.

    Older recordings have only the count of connections begun (2 here), the documented fallback.
    """
    for fields in (True, False):
        b = Bridge(tmp_path, fields, f"f{fields}")
        b.emit(Ws(t=0.1, what="connect", detail="conn 1"))
        b.activity(1, 1, 1, 1.0, [1.1], 2.0)
        b.emit(Client(t=3.0, action="reconnect", reason="closed", conn=2),
               Ws(t=3.0, what="reconnect", detail="conn 1"),
               Client(t=3.2, action="reconnect", reason="resume_rejected", conn=3),  # a retry: no ws reconnect
               Ws(t=3.5, what="connect", detail="conn 3, resumed with handle h"),
               Client(t=3.5, action="resend", reason="not_in_handle", conn=3, turn=1, attempt=2))
        b.activity(3, 1, 2, 3.51, [3.52], 3.53).answer(4.0, 4.5)
        assert labels(b.done()) == ([(1, 1, 1), (1, 2, 3)] if fields else [(1, 1, 1), (1, 2, 2)])


def test_app_stage_only_orphans_and_stray_audio(tmp_path):
    """No wire tap: the app-stage sends are walked; an ActivityEnd with nothing open and audio outside."""
    rec = Recorder(tmp_path / "r", {})
    for i, (t, msg) in enumerate([(1.0, "audio"), (2.0, "activity_start"), (2.1, "audio"), (3.0, "activity_end"),
                                  (3.1, "audio"), (3.2, "activity_end")]):
        rec.emit(Sent(t=t, msg=msg, n_bytes=0, seq=i, n_samples=320 if msg == "audio" else None))
    rec.close()
    w = walk(load(tmp_path / "r"))
    assert not w.wire and w.orphan_ends == (3.2,) and w.stray_audio == ((1.0, None), (3.1, 3.0))
    assert [(a.turn, a.attempt, a.conn, a.start_t, a.end_t, a.audio_s) for a in w.activities] == [
        (1, 1, 1, 2.0, 3.0, 0.02)]


def test_connection_starts():
    import pandas as pd

    ws = pd.DataFrame({"t": [0.2, 5.0, 5.4, 9.0, 9.6], "what": ["connect", "reconnect", "connect", "reconnect",
                                                                  "connect"]})
    assert connection_starts(ws) == [0.2, 5.0, 9.0]  # the decision to replace a connection starts the next
    assert connection_starts(ws[ws["what"] == "connect"]) == [0.2, 5.4, 9.6]  # no reconnect marks (a tap)
    assert connection_starts(pd.DataFrame({"t": np.array([])})) == []


def test_a_re_send_stopped_by_barge_in_counts_as_its_answer(tmp_path):
    """The client core counts an interrupted answer as answered: the re-send's answer time is the barge-in's."""
    b = Bridge(tmp_path, True)
    b.emit(Ws(t=0.1, what="connect", detail="conn 1"))
    b.activity(1, 1, 1, 1.0, [1.1], 2.0)
    b.emit(Ws(t=5.0, what="reconnect", detail="conn 1"), Ws(t=5.2, what="connect", detail="conn 2"),
           Client(t=5.2, action="resend", reason="not_in_handle", conn=2, turn=1, attempt=2))
    b.activity(2, 1, 2, 5.21, [5.22], 5.23).emit(Server(t=5.6, msg="model_audio", stage="app"))
    b.activity(2, 2, 1, 6.0, [6.1], 7.0).answer(7.4, 7.9)
    b.emit(Client(t=6.05, action="interrupted", reason="barge_in", conn=2, turn=1, attempt=2))
    w = walk(b.done())
    first, resent, second = w.activities
    assert (resent.interrupted_t, resent.answered_t, resent.turn_complete_t) == (6.05, 6.05, None)
    assert w.resent_answer(first) == 6.05 and second.answered_t == 7.9 and not second.interrupted
