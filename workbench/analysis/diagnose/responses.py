"""Rules on the server's side: answers to each turn (Failure A and its kin), keepalive, the receive loop and the
event loop, the watchdog, barge-in."""

from __future__ import annotations

import math

import numpy as np

from workbench.analysis.activities import Activity
from workbench.analysis.diagnose.context import (
    CONTENT_KINDS,
    READ_GRACE_S,
    Context,
    Finding,
    KeepaliveCause,
    Ping,
    PingOutcome,
    Severity,
    _between,
    _emu_said,
    _loop_blocked,
    _max_lag,
    _quote,
    _receive_idle,
    _responses,
    _s,
    _select,
    _text,
    _times,
    _transcripts,
)


def no_response_after_activity_end(c: Context) -> list[Finding]:
    """No model_audio, turn_complete or tool_call within the response timeout after an ActivityEnd (Failure A).

    Told apart by what the server showed of the turn: ``heard_not_answered`` when it sent the turn's
    inputTranscription and then nothing (the rest stay ``no_response_after_activity_end``, "never
    heard" when the session's other turns were transcribed); ``empty_answer`` when the first response
    is a turnComplete with nothing in it (python-genai #2117).
    """
    out = []
    responses = c.responses
    wire_responses = _responses(c, c.server_wire)
    content = _times(c.server_app, msg=CONTENT_KINDS)
    completes = _times(c.server_app, msg="turn_complete")
    interrupts = _times(c.server_app, msg="interrupted")
    any_transcript = bool(len(_select(c.server_app, "server", msg="input_transcription")))
    prev_end: float | None = None
    for a in c.activities:
        if a.end_t is None:
            continue
        # An earlier answer still owing its turnComplete (it waits for playback) owns the next one.
        owed = prev_end is not None and _between(content, prev_end, a.end_t).size > 0 \
            and not _between(completes, prev_end, a.end_t).size
        prev_end = a.end_t
        deadline = a.end_t + c.response_timeout_s
        window = min(a.next_start_t, c.end_t + 1e-9)
        heard = _transcripts(c, a.start_t, _heard_until(c, a))
        first = _between(responses, a.end_t, a.next_start_t, closed_hi=False)
        if first.size and first[0] in completes and not owed and not _between(content, a.end_t, first[0]).size \
                and not _between(interrupts, a.end_t, first[0]).size:
            answered = c.walk.later_answer(a)
            out.append(Finding(
                "empty_answer", "warning" if answered is not None else "error",
                f"empty answer to ActivityEnd at {_s(a.end_t)}",
                f"turnComplete at {_s(first[0])}, {first[0] - a.end_t:.1f} s after ActivityEnd at {_s(a.end_t)}, "
                "with no audio, text or tool call before it"
                + (f"; the server heard the turn ({_quote(heard[0])})" if heard else "")
                + (f"; the re-sent turn was answered at {_s(answered)}" if answered is not None else "")
                + _emu_said(c, a.start_t, first[0]), a.end_t,
                "the model ended its turn without saying anything (python-genai #2117): the user hears silence; "
                "the turn counts as answered unless the bridge checks for content"))
            continue
        if _between(responses, a.end_t, deadline).size:
            continue
        late = _between(responses, deadline, a.next_start_t, closed_hi=False)
        if late.size:
            upto = _transcripts(c, a.start_t, float(late[0]) + 1e-9)
            again = [x for x in upto if x[0] > heard[0][0] and x[1] == heard[0][1]] if heard else []
            evidence = (f"first response {late[0] - a.end_t:.1f} s after ActivityEnd at {_s(a.end_t)} "
                        f"(timeout {c.response_timeout_s:g} s)")
            if heard:
                evidence += f"; heard at {_s(heard[0][0])}"
            if again:
                evidence += (f"; the same transcript came again at {_s(again[0][0])} before the answer "
                             "(the 'late' pattern, gemini-live-api-examples #48)")
            evidence += _emu_said(c, a.start_t, float(late[0]))
            out.append(Finding(
                "no_response_after_activity_end", "warning", f"ActivityEnd at {_s(a.end_t)} answered late",
                evidence, a.end_t, "slow model response"))
            continue
        cut = c.end_t < deadline
        n_read = _between(c.server_app["t"].to_numpy(float), a.end_t, min(deadline, c.end_t)).size
        evidence = (f"ActivityEnd left at {_s(a.end_t)} after {a.n_audio} audio chunk(s); "
                    + (f"the session ended {c.end_t - a.end_t:.1f} s later" if cut else
                       f"no model_audio/turn_complete/tool_call within {c.response_timeout_s:g} s")
                    + f"; {n_read} server message(s) of any kind read in that time")
        answered = c.walk.resent_answer(a)
        if answered is not None:
            evidence += f"; the bridge re-sent the turn on a new connection and it was answered at {_s(answered)}"
        evidence += _emu_said(c, a.start_t, min(window, deadline))
        severity: Severity = "warning" if cut or answered is not None else "error"
        recovered = " (recovered by a re-send)" if answered else ""
        if heard:
            out.append(Finding(
                "heard_not_answered", severity, f"turn heard but not answered: ActivityEnd at {_s(a.end_t)}"
                + recovered, f"the server sent the turn's inputTranscription ({_quote(heard[0])}) and then no "
                "answer; " + evidence, a.end_t,
                "the server received and transcribed the turn but the model never answered it (no-response "
                "'heard'): nothing in the recording points at the client; re-send the turn or prompt again"))
            continue
        if any_transcript and not cut:
            evidence += ("; never heard: no inputTranscription for this activity, while the session's others were "
                         "transcribed")
        out.append(Finding(
            "no_response_after_activity_end", severity,
            f"no response to ActivityEnd at {_s(a.end_t)}" + recovered,
            evidence, a.end_t, _why_no_response(c, a, wire_responses)))
    return out


def _heard_until(c: Context, a: Activity) -> float:
    """Where an activity's inputTranscription may still arrive: it comes after the ActivityEnd, so a turn
    re-sent back to back with the next one is transcribed after the next ActivityStart, but never after
    the next activity's own end (then the transcript is the next one's)."""
    assert a.end_t is not None
    nxt = next((b for b in c.activities if b.start_t >= a.end_t and b is not a), None)
    hi = a.end_t + c.response_timeout_s
    if nxt is not None and nxt.end_t is not None:
        hi = min(hi, nxt.end_t)
    elif nxt is not None:
        hi = min(hi, max(nxt.start_t, a.end_t + 1.0))
    return min(hi, c.end_t + 1e-9)


def _why_no_response(c: Context, a: Activity, wire_responses: np.ndarray) -> str:
    assert a.end_t is not None
    on_wire = _between(wire_responses, a.end_t, min(a.next_start_t, c.end_t))
    if on_wire.size:
        return (f"the server did answer ({on_wire.size} response frame(s) on the wire from {_s(on_wire[0])}) but the "
                "application never read them: the receive loop stopped (see receive_loop_idle)")
    if a.n_audio == 0:
        return "the activity was empty: no audio between ActivityStart and ActivityEnd"
    after = [t for t, end in c.stray_audio if end == a.end_t]
    if after:
        return f"{len(after)} audio chunk(s) followed ActivityEnd before the next ActivityStart"
    if not c.wire_sends:
        return "no wire tap: cannot tell whether ActivityEnd left the socket or the server stayed silent"
    said = _emu_said(c, a.start_t, a.end_t + c.response_timeout_s)
    if "no-response:noise" in said:
        return ("the server took the activity for noise (no speech in it) and did not answer (no-response "
                "'noise'): check the turn detector's threshold against the noise floor")
    if "fault stall" in said:
        return ("the server stalled: it neither read the socket nor sent anything (the emulator's stall fault), "
                "so the ActivityEnd was not even received in time")
    return (f"ActivityEnd left the socket at {_s(a.end_t)} after the turn's audio and the server sent no response: "
            "inference never triggered on the server side (Failure A); nothing in the recording points at the client")


def receive_loop_idle(c: Context) -> list[Finding]:
    """The socket kept delivering frames but the application stopped reading them.

    The SDK's ``receive()`` ends at every turn_complete; a bridge that iterates it once reads nothing
    after the greeting. Needs wire-stage ``server`` events (the wire tap's ``process_event``).
    """
    idle = _receive_idle(c)
    if idle is None:
        return []
    n = idle.unread_t.size
    if idle.last_app_t is None:
        last = "the application never read a server message"
        t = float(idle.unread_t[0])
    else:
        last = f"the application's last read was at {_s(idle.last_app_t)} ({idle.last_app_msg})"
        t = idle.last_app_t
    evidence = (f"{last}; {n} frame(s) read off the socket after it ({_s(idle.unread_t[0])}–{_s(idle.unread_t[-1])}) "
                f"were never read by the application; session ended at {_s(c.end_t)}")
    full = c.max_queue is not None and n >= c.max_queue
    if full:
        evidence += (f"; max_queue={c.max_queue} frames were waiting, so websockets stopped reading the socket "
                     "(pongs unread from then on)")
    after_complete = idle.last_app_msg == "turn_complete"
    return [Finding(
        "receive_loop_idle", "error", "the application stopped reading server messages", evidence, t,
        ("receive() ended at turn_complete and was not called again: the receive loop must be "
         "`while True: async for msg in session.receive()`" if after_complete else
         "the receive loop stopped or is stuck") + ("; with max_queue full, pongs go unread and the keepalive "
                                                     "closes the session with 1011" if full else ""))]


def unanswered_pings(c: Context) -> list[Finding]:
    """Keepalive pings with no pong within the ping timeout (``live.ping_timeout_s`` in session.json).

    Judged per connection: a ping whose connection closed for another reason before its timeout ran
    out, or whose session ended first, gets no verdict.
    """
    bad = [p for p in c.pings if p.outcome is PingOutcome.UNANSWERED]
    if not bad:
        return []
    parts = []
    for p in bad[:5]:
        on = f" (conn {p.conn})" if p.conn is not None else ""
        if p.pong_t is None:
            until = p.closed_t if p.closed_t is not None else c.end_t
            parts.append(f"ping at {_s(p.t)}{on}: no pong in the {until - p.t:.1f} s until "
                         + ("its connection closed" if p.closed_t is not None else "the session ended"))
        else:
            parts.append(f"ping at {_s(p.t)}{on}: pong {p.pong_t - p.t:.1f} s later")
    return [Finding(
        "unanswered_pings", "error", f"{len(bad)} keepalive ping(s) unanswered within {c.ping_timeout_s:g} s",
        "; ".join(parts) + (" …" if len(bad) > 5 else ""), bad[0].t, _why_unanswered(c, bad[0])[1])]


LATE_PONG_S = 5.0  # a pong this slow is late: loopback answers in ms; Gemini's come 8-30 s late (sip-to-ai PR #14)


def late_pongs(c: Context) -> list[Finding]:
    """Pongs that came back late but in time (or with no ping timeout set): the server's keepalive is slow.

    Information when the connection has no ping timeout (``ping_timeout=None``, the bridge's default:
    nothing closes on a late pong) or when the pongs stay well inside it; a warning when a pong used
    half the timeout or more, because the next one may trip it.
    """
    late = [p for p in c.pings if p.answered and (p.latency_s or 0.0) >= LATE_PONG_S]
    if not late:
        return []
    worst = max(late, key=lambda p: p.latency_s or 0.0)
    lat = [p.latency_s or 0.0 for p in late]
    risky = math.isfinite(c.ping_timeout_s) and max(lat) >= 0.5 * c.ping_timeout_s
    setting = ("no ping timeout (ping_timeout=None), so late pongs close nothing" if not math.isfinite(c.ping_timeout_s)
               else f"ping_timeout={c.ping_timeout_s:g} s")
    return [Finding(
        "late_pongs", "warning" if risky else "info", f"{len(late)} keepalive pong(s) came {LATE_PONG_S:g} s or more "
        "after their ping", f"pong delays {min(lat):.1f}–{max(lat):.1f} s (worst: ping at {_s(worst.t)}, pong at "
        f"{_s(worst.pong_t or 0.0)}); {setting}", late[0].t,
        "the server answers pings late (live Gemini: 8–30 s, aicc2025/sip-to-ai PR #14)"
        + (f"; a pong later than {c.ping_timeout_s:g} s would close the connection with 1011 keepalive ping "
           "timeout: use ping_interval=None or ping_timeout >= 30 s" if risky else ""))]


def loop_lag(c: Context) -> list[Finding]:
    """Event-loop lag samples above the threshold: a blocked loop delays pongs like an unread socket."""
    lag = _select(c.events, "loop_lag")
    if "lag_ms" not in lag or not len(lag):
        return []
    ms = lag["lag_ms"].to_numpy(float)
    above = ms > c.lag_threshold_ms
    if not above.any():
        return []
    max_ms, max_t = _max_lag(c)
    blocked = _loop_blocked(c)
    return [Finding(
        "loop_lag", "error" if blocked else "warning",
        f"event loop lagged above {c.lag_threshold_ms:g} ms {int(above.sum())} time(s)",
        f"{int(above.sum())} of {ms.size} samples above {c.lag_threshold_ms:g} ms; max {max_ms:.0f} ms at "
        f"{_s(max_t or 0.0)}; p99 {np.percentile(ms, 99):.0f} ms", max_t,
        "CPU work or a blocking call inside a coroutine" + (
            f"; a stall of {max_ms / 1000:.1f} s is long enough to miss the {c.ping_timeout_s:g} s ping timeout"
            if blocked else ""))]


def _keepalive_cause(c: Context, close_t: float, conn: int | None = None) -> str:
    """Why the keepalive closed the connection ``conn`` at ``close_t``: the verdict on its unanswered ping."""
    unanswered = [p for p in c.pings if p.outcome is PingOutcome.UNANSWERED and p.t <= close_t
                  and (conn is None or p.conn is None or p.conn == conn)]
    if not unanswered:
        idle = _receive_idle(c)
        if idle is not None:
            return _unread_cause(c, idle.last_app_t, idle.unread_t.size)
        return "no unanswered ping in the recording: cannot tell which (was the wire tap installed?)"
    return _why_unanswered(c, unanswered[-1])[1]


def _asks(c: Context) -> np.ndarray:
    """When the client asked the server for an answer: ActivityEnd, a text turn, a tool response."""
    return _times(c.sends, msg=("activity_end", "client_content", "tool_response"))


def _due_at(c: Context, x: float) -> float | None:
    """The ask still waiting for a server reply at ``x`` (turn_complete, tool_call or interrupted), if any."""
    srv = c.server_wire if c.wire_server else c.server_app
    replies = _times(srv, msg=("turn_complete", "tool_call", "interrupted"))
    asks = _asks(c)
    asks = asks[asks <= x]
    if not asks.size:
        return None
    last = float(asks[-1])
    return None if _between(replies, last, x).size else last


def _why_unanswered(c: Context, p: Ping) -> tuple[KeepaliveCause, str]:
    """Tell apart why ping ``p`` got no pong in time: unread socket, blocked loop, late pong or a stall.

    The window is the ping's timeout (up to its connection's close).  Frames left unread come first (with
    max_queue full websockets stops reading, pongs included); then a loop blocked for half the timeout;
    then a live server (frames kept arriving and were read, or nothing was due from it): its pong was
    late, and the client's keepalive setting is the cause; only when an answer was due and nothing at
    all came is it a stall.
    """
    hi = min(p.t + c.ping_timeout_s, p.closed_t if p.closed_t is not None else c.end_t)
    unread = _unread_in(c, hi)
    if unread is not None:
        return KeepaliveCause.RECEIVE_STOPPED, _unread_cause(c, *unread)
    blocked = _blocked_in(c, p.t, hi)
    if blocked is not None:
        ms, at = blocked
        return KeepaliveCause.LOOP_BLOCKED, (
            f"the event loop was blocked ({ms / 1000:.1f} s at {_s(at)}), so pongs were read too late")
    srv = c.server_wire if c.wire_server else c.server_app
    frames = _between(_times(srv), p.t, hi)
    due = _due_at(c, p.t)
    late = (f"late pong: the ping at {_s(p.t)} got no pong within ping_timeout={c.ping_timeout_s:g} s while "
            "the server was alive; live Gemini pongs come 8–30 s late (aicc2025/sip-to-ai PR #14), so the "
            "client's keepalive setting closed the connection (use ping_interval=None or ping_timeout >= 30 s)")
    if frames.size:
        return KeepaliveCause.LATE_PONG, (
            late + f"; the server kept sending frames after the ping ({frames.size} read, last at "
            f"{_s(frames[-1])}), so it was not stalled")
    open_turn = [a for a in c.activities if a.end_t is None and a.cut_t is None and a.start_t < p.t]
    if due is None:
        why = (f"the user's turn was open without ActivityEnd since {_s(open_turn[-1].start_t)} (Failure B): the "
               "server was still waiting for the end of the user's turn" if open_turn
               else "every request had its answer")
        return KeepaliveCause.LATE_PONG, late + f"; nothing was due from the server ({why})"
    if not c.wire_server:
        return KeepaliveCause.UNKNOWN, "no wire tap: cannot tell a stalled server from an unread socket"
    wire_t = _times(c.server_wire)
    last_wire = f"last server frame at {_s(wire_t[wire_t <= p.t][-1])}" if (wire_t <= p.t).any() else "no frames"
    what = "ActivityEnd" if due in _times(c.sends, msg="activity_end") else "the request"
    return KeepaliveCause.STALL, (
        f"server stalled: the ping at {_s(p.t)} went unanswered while the application's receive loop was still "
        f"running and no frames arrived ({last_wire}); {what} at {_s(due)} got no response (Failure A)")


def _unread_cause(c: Context, last_t: float | None, n: int) -> str:
    """The keepalive cause when ``n`` frames waited unread after the application's last read at ``last_t``."""
    return (f"pongs went unread because the receive loop stopped (last application read at "
            f"{_s(last_t) if last_t is not None else 'never'}, {n} frame(s) unread"
            f"{'; max_queue reached' if c.max_queue and n >= c.max_queue else ''})")


def _unread_in(c: Context, hi: float) -> tuple[float | None, int] | None:
    """Frames read off the socket by ``hi - READ_GRACE_S`` that the application had not read by ``hi``."""
    if "msg" not in c.server_wire or not len(c.server_wire):
        return None
    wire = c.server_wire[c.server_wire["msg"] != "setup_complete"]["t"].to_numpy(float)
    app = c.server_app["t"].to_numpy(float) if len(c.server_app) else np.array([])
    app = app[app <= hi]
    last = float(app[-1]) if app.size else None
    unread = wire[(wire > (last if last is not None else -math.inf)) & (wire <= hi - READ_GRACE_S)]
    if not unread.size:
        return None
    return last, int(unread.size)


def _blocked_in(c: Context, lo: float, hi: float) -> tuple[float, float] | None:
    """The longest loop stall of half the ping timeout or more overlapping [lo, hi]: (lag ms, sample t)."""
    lag = _select(c.events, "loop_lag")
    if "lag_ms" not in lag or not len(lag) or not math.isfinite(c.ping_timeout_s):
        return None
    t = lag["t"].to_numpy(float)
    ms = lag["lag_ms"].to_numpy(float)
    hit = (ms >= 0.5 * c.ping_timeout_s * 1000.0) & (t >= lo) & (t - ms / 1000.0 <= hi + 1.0)
    if not hit.any():
        return None
    i = int(np.flatnonzero(hit)[ms[hit].argmax()])
    return float(ms[i]), float(t[i])


FLOOD_PER_S = 25.0  # server messages of one kind per second that is more than a live answer sends


def server_flood(c: Context) -> list[Finding]:
    """Bursts of one server message kind faster than ``FLOOD_PER_S`` for a second or more (e.g. transcripts)."""
    if "msg" not in c.server_wire and "msg" not in c.server_app:
        return []
    df = c.server_wire if "msg" in c.server_wire and len(c.server_wire) else c.server_app
    out = []
    for kind, group in df.groupby("msg"):
        if kind == "model_audio":  # paced audio chunks are many by design
            continue
        t = np.sort(group["t"].to_numpy(float))
        n = int(FLOOD_PER_S)
        if t.size <= n:
            continue
        window = t[n:] - t[:-n]  # time taken by n + 1 consecutive messages
        fast = np.flatnonzero(window <= 1.0)
        if not fast.size:
            continue
        t0 = float(t[fast[0]])
        rate = n / max(float(window.min()), 1e-3)
        out.append(Finding(
            "server_flood", "warning", f"server flooded {kind} messages from {_s(t0)}",
            f"{t.size} {kind} message(s) in all, up to {rate:.0f}/s (more than {FLOOD_PER_S:g}/s) from {_s(t0)}", t0,
            "many small server messages: a receive loop that stops or reads slowly fills max_queue "
            "quickly, and then pongs go unread (1011 keepalive ping timeout)"))
    return out


def watchdog(c: Context) -> list[Finding]:
    """The response watchdog fired (``watchdog`` events: ``after_s``, ``action``), and whether an answer followed."""
    wd = _select(c.events, "watchdog")
    out = []
    responses = c.responses
    for _, row in wd.iterrows():
        t = float(row["t"])
        after_s = _text(row, "after_s")
        waited = f"{float(after_s):g} s" if after_s is not None else "some time"
        action = row.get("action") if isinstance(row.get("action"), str) else "?"
        # The window ends at the next ActivityStart after the activity on the wire when it fired (the latest one
        # started by then; not the first activity's next start, which ended the window before a later turn's answer).
        on_wire = [a for a in c.activities if a.start_t <= t]
        nxt = on_wire[-1].next_start_t if on_wire else math.inf
        answered = _between(responses, t, min(nxt, c.end_t))
        # A re-send on a new connection is answered there, after the next ActivityStart: the turn table knows.
        ended = [a for a in c.activities if a.end_t is not None and a.end_t <= t]
        resent = c.walk.resent_answer(max(ended, key=lambda a: a.end_t or 0.0)) if ended else None
        if answered.size:
            followed = f"a response followed at {_s(answered[0])}"
        elif resent is not None:
            followed = f"the re-sent turn was answered at {_s(resent)}"
        else:
            followed = "no response followed"
        out.append(Finding(
            "watchdog", "warning", f"response watchdog fired at {_s(t)} ({action})",
            f"no response {waited} after ActivityEnd; action: {action}; {followed}", t,
            None if answered.size or resent is not None
            else "the server did not answer; see no_response_after_activity_end"))
    return out


def barge_in(c: Context) -> list[Finding]:
    """An answer stopped by the user's next turn (START_OF_ACTIVITY_INTERRUPTS, the default): a note.

    The server sends ``interrupted``, then turnComplete without generationComplete, and cancels a
    pending tool call (``tool_call_cancellation``).  Expected behaviour, not a failure.
    """
    srv = c.server_app if len(_select(c.server_app, "server", msg="interrupted")) else c.server_wire
    out = []
    starts = _times(c.sends, msg="activity_start")
    audio = _times(srv, msg="model_audio")
    completes = _times(srv, msg="turn_complete")
    generated = _times(srv, msg="generation_complete")
    cancels = _times(srv, msg="tool_call_cancellation")
    for t in _times(srv, msg="interrupted"):
        before = starts[starts <= t + 1e-6]
        by = f"by the ActivityStart at {_s(before[-1])}" if before.size else "with no ActivityStart before it"
        answering = audio[audio < t]
        since = f"answer audio since {_s(answering[0])}" if answering.size else "no answer audio yet"
        if answering.size and before.size:
            prev = starts[starts < before[-1]]
            lo = float(prev[-1]) if prev.size else -math.inf
            mine = answering[answering > lo]
            since = f"answer audio since {_s(mine[0])}" if mine.size else since
        done = _between(completes, t, t + 30.0)
        if done.size:
            gen = "after generationComplete" if _between(generated, t, done[0]).size else "without generationComplete"
            tail = f"; turnComplete at {_s(done[0])} {gen}"
        else:
            tail = "; no turnComplete followed"
        n_cancel = _between(cancels, t - 1.0, t + 5.0).size
        out.append(Finding(
            "barge_in", "info", f"answer interrupted at {_s(t)} by the user's turn",
            f"interrupted at {_s(t)} {by}; {since}{tail}"
            + (f"; {n_cancel} tool call cancellation(s)" if n_cancel else ""), t))
    return out


def late_answer_masks_next_turn(c: Context) -> list[Finding]:
    """A turn's answer came so late that it landed after the next turn: the next turn looks answered but is not.

    Answers come in order, one turnComplete per request (interrupted answers included), so the
    turnCompletes of one connection are paired with its ActivityEnds (and text turns) oldest first.
    When a turnComplete that pays an older turn arrives after a newer turn's ActivityEnd, a
    time-window reading takes it for the newer turn's answer; if the newer turn is still unpaid when
    its connection ends, its Failure A was hidden.  A repeated inputTranscription is named when present.
    """
    out = []
    bounds = c.connects[1:] + [math.inf]
    asks = _times(c.sends, msg="client_content")
    items: list[tuple[float, int, Activity | None]] = [(float(t), 0, None) for t in asks]
    items += [(a.end_t, 0, a) for a in c.activities if a.end_t is not None]
    items += [(float(t), 1, None) for t in _times(c.server_app, msg="turn_complete")]
    owed: list[tuple[float, Activity | None]] = []
    masked: dict[int, tuple[Activity, float]] = {}  # id(newer activity) -> (older activity paid, turnComplete t)
    seg = 0

    def settle() -> None:
        for _, b in owed:
            if b is not None and id(b) in masked:
                older, tc = masked[id(b)]
                finding = _masked_finding(c, older, b, tc)
                if finding is not None:
                    out.append(finding)
        owed.clear()

    for t, what, act in sorted(items, key=lambda x: (x[0], x[1])):
        while t >= bounds[seg]:
            settle()
            seg += 1
        if what == 0:
            owed.append((t, act))
        elif owed:
            _, paid = owed.pop(0)
            newest = owed[-1][1] if owed else None
            if paid is not None and newest is not None:
                masked[id(newest)] = (paid, t)
    if c.end_t - (owed[-1][0] if owed else 0.0) >= c.response_timeout_s:
        settle()
    return out


def _masked_finding(c: Context, a: Activity, b: Activity, tc: float) -> Finding | None:
    """The finding when the evidence says the turnComplete at ``tc`` was ``a``'s, else None.

    In-order pairing alone cannot tell a late answer to ``a`` from a server that skipped ``a``
    (Failure A) and answered ``b``: it takes the older turn's transcript again before the answer
    (the 'late' pattern, gemini-live-api-examples #48), or an answer that began before ``b`` ended.
    """
    assert a.end_t is not None and b.end_t is not None
    tr_a = _transcripts(c, a.start_t, b.start_t)
    tr_b = _transcripts(c, b.start_t, tc + 1e-9)
    repeat = [x for x in tr_b if tr_a and x[1] == tr_a[0][1]]
    content = _times(c.server_app, msg=CONTENT_KINDS)
    began = _between(content, a.end_t, tc)
    early = began.size > 0 and began[-1] < b.end_t and not _between(content, b.end_t, tc).size
    if not repeat and not early:
        return None
    spoke = _between(content, a.end_t, b.start_t)
    evidence = (f"turn ending {_s(a.end_t)} got no turnComplete before the next ActivityStart at {_s(b.start_t)}"
                + (f" (its answer began at {_s(spoke[0])})" if spoke.size else "")
                + f"; the turnComplete at {_s(tc)}, {tc - a.end_t:.1f} s after its ActivityEnd, paid it (answers "
                f"come in order); no other turnComplete followed: the turn ending {_s(b.end_t)} got none")
    if repeat:
        evidence += f"; the first turn's transcript came again at {_s(repeat[0][0])} ({_quote(repeat[0])})"
    return Finding(
        "late_answer_masks_next_turn", "error", f"late answer to the turn ending {_s(a.end_t)} masks no answer "
        f"to the turn ending {_s(b.end_t)}", evidence, b.end_t,
        "the late answer to one turn is counted as the next turn's answer, hiding Failure A on the next: "
        "match answers to turns in order (one turnComplete per turn), not by time window")
