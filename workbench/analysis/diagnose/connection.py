"""Rules on the connection and the session: close codes, goAway, reconnects and resumption, errors, the give-up."""

from __future__ import annotations

import math

from workbench.analysis.diagnose.context import (
    Context,
    Finding,
    PingOutcome,
    _between,
    _client,
    _col,
    _emu,
    _handle_times,
    _quote,
    _resumes,
    _s,
    _select,
    _text,
    _times,
    _transcripts,
    _vad,
)
from workbench.analysis.diagnose.responses import _keepalive_cause

CLOSE_CODES = {
    1000: ("info", "normal closure"),
    1001: ("info", "going away"),
    1006: ("error", "abnormal closure, no close frame: network drop or the peer process died"),
    1007: ("error", "invalid argument from the server (e.g. audio outside an activity with a strict server)"),
    1008: ("error", "policy violation from the server (API key, quota, model or config not allowed)"),
    1011: ("error", "internal error"),
}


def close(c: Context) -> list[Finding]:
    """The websocket close: code, reason, which side, and the likely cause given the other evidence."""
    out = []
    reconnect_ts = c.connects[1:]
    pings = c.pings
    for cl in c.closes:
        t, code, reason, detail = cl.t, cl.code, cl.reason, cl.detail
        severity, meaning = CLOSE_CODES.get(code or 0, ("error", "unexpected close code"))
        from_server = cl.by == "server" or (cl.by == "unknown" and "from server" in detail)
        if cl.keepalive:
            meaning = "client-side keepalive failure: " + _keepalive_cause(c, t, cl.conn)
        elif code == 1011 and from_server:
            meaning = "server internal error (1011 sent by the server)"
            if "deadline expired" in reason.lower():
                meaning += "; 'Deadline expired': the connection reached its time limit (goAway by age)"
        elif code == 1011 and cl.by == "client":
            meaning = "internal error (1011 sent by the client)"
        elif code == 1007:
            stray = len(c.stray_audio)
            meaning += f"; {stray} audio chunk(s) were sent outside an activity" if stray else ""
        elif code == 1008 and "not found" in reason:
            meaning = "the server does not know the model (1008 policy violation): check the model name"
        elif code == 1008 and "resumption handle" in reason.lower():
            meaning = ("the server refused the resumption handle (1008): expired (handles live 2 h) or not this "
                       "session's; resume with the latest handle or start a new session")
        cut = [p for p in pings if p.outcome is PingOutcome.CUT and p.closed_t == t]
        if cut and code not in (1000, 1001):  # with pings every second one is nearly always in flight
            meaning += (f"; a keepalive ping sent {(t - cut[-1].t) * 1000:.0f} ms before the close was still in "
                        "flight: it was not unanswered and is not the cause")
        went = _between(_times(c.server_app, msg="go_away"), -math.inf, t)
        if went.size and (not reconnect_ts or reconnect_ts[-1] < went[-1]):
            meaning += f"; after the server's goAway at {_s(went[-1])} (connection time limit)"
        # A connect after the close (a retry of one reconnect has no reconnect mark of its own) means it came back.
        later = sorted([r for r in reconnect_ts if r > t] + [x for x in _times(c.ws, what="connect") if x > t])
        if severity == "error" and later:
            severity, meaning = "warning", meaning + f"; the bridge reconnected at {_s(later[0])}"
        out.append(Finding(
            "close", severity, f"websocket closed {code} {reason}".rstrip(),
            f"close {code} '{reason}' at {_s(t)}" + (f" ({detail})" if detail else ""), t, meaning))
    return out


def go_away(c: Context) -> list[Finding]:
    """Server goAway: when, the time left, and whether the bridge reconnected afterwards.

    Reconnection is seen as ``ws`` what="connect"/"reconnect" after the goAway (the bridge does not emit it yet).
    """
    app = _select(c.server_app, "server", msg="go_away")
    df = app if len(app) else _select(c.server_wire, "server", msg="go_away")
    out = []
    connects = c.connects
    for _, row in df.iterrows():
        t = float(row["t"])
        left = _text(row, "detail") or "?"
        after = [x for x in connects if x > t]
        if after:
            out.append(Finding("go_away", "info", f"server goAway at {_s(t)}; reconnected",
                               f"goAway at {_s(t)} (time left {left}); reconnected at {_s(after[0])}", t))
        else:
            out.append(Finding("go_away", "warning", f"server goAway at {_s(t)} and no reconnect",
                               f"goAway at {_s(t)} (time left {left}); no reconnect before the session ended at "
                               f"{_s(c.end_t)}", t, "the connection time limit (~10 min): resume with the session "
                                                    "handle before timeLeft runs out"))
    return out


def reconnects(c: Context) -> list[Finding]:
    """Reconnections, and user turns lost across them.

    Expects ``ws`` what="connect" per connection (or what="reconnect"). A turn is lost when its ActivityEnd
    went out before a reconnect, no response came before the reconnect, and it was not re-sent: no
    ActivityStart after the reconnect before the next ``vad`` speech_start (a re-send is not driven by new
    speech). Speech is also lost when a speech_start's window saw no audio sent at all (no connection).
    """
    connects = c.connects
    again = connects[1:]
    if not again:
        return []
    responses = c.responses
    speech = _vad(c, "speech_start")
    resend_marks = _times(_select(c.events, "session"), what="resend")
    lost: list[str] = []
    for i, r in enumerate(again):
        prev = connects[i]
        next_speech = speech[speech > r]
        resend_by = float(next_speech[0]) if next_speech.size else math.inf
        next_r = again[i + 1] if i + 1 < len(again) else math.inf
        # The bridge marks its re-send (session "resend"); without the mark, an ActivityStart not driven by speech.
        resent = bool(_between(resend_marks, r, next_r, closed_hi=False).size) or any(
            r < a.start_t < resend_by for a in c.activities)
        for a in c.activities:
            if a.end_t is None or not prev <= a.end_t < r:
                continue
            if not _between(responses, a.end_t, r).size and not resent and not c.walk.later_attempts(a):
                lost.append(f"ActivityEnd at {_s(a.end_t)} unanswered before the reconnect at {_s(r)} and not re-sent")
    audio_t = _times(c.sends, msg=("audio", "activity_start"))
    ends = _vad(c, "speech_end")
    for i, ts in enumerate(speech):
        nxt = float(speech[i + 1]) if i + 1 < len(speech) else c.end_t
        stop = _between(ends, ts, nxt)
        if not _between(audio_t, ts - 1e-6, float(stop[0]) + 1.0 if stop.size else nxt).size:
            lost.append(f"speech at {_s(ts)} never reached a connection (no audio sent)")
    evidence = f"{len(again)} reconnect(s) at " + ", ".join(_s(x) for x in again)
    if lost:
        return [Finding("reconnects", "error", f"{len(lost)} user turn(s) lost across reconnects",
                        evidence + "; " + "; ".join(lost), again[0],
                        "turns in flight when the connection dropped must be re-sent after resuming")]
    return [Finding("reconnects", "info", f"{len(again)} reconnect(s), no user turn lost", evidence, again[0])]


def errors(c: Context) -> list[Finding]:
    """Errors a stage caught, grouped by where and message."""
    err = _select(c.events, "error")
    if not len(err):
        return []
    out = []
    where = _col(err, "where", "?")
    message = _col(err, "message", "")
    groups: dict[tuple[str, str], list[float]] = {}
    for t, w, m in zip(err["t"], where, message, strict=True):
        groups.setdefault((str(w), str(m)), []).append(float(t))
    connects = _times(c.ws, what="connect")
    for (w, m), ts in groups.items():
        evidence = f"{len(ts)}× in {w}, first at {_s(ts[0])}: {m}"
        later = connects[connects > ts[-1]]
        if w == "reconnect" and later.size:  # a failed attempt the bridge got past: the session went on
            out.append(Finding("errors", "warning", f"error in {w}: {m}"[:160],
                               evidence + f"; the bridge connected again at {_s(later[0])}", ts[0]))
            continue
        out.append(Finding("errors", "error", f"error in {w}: {m}"[:160], evidence, ts[0]))
    return out


def cut_short(c: Context) -> list[Finding]:
    """The recording was never closed: the process was killed or crashed, so the tail may be missing."""
    if not c.cut_short:
        return []
    evidence = f"session.json has no 'ended'; last event at {_s(c.end_t)}"
    if c.problems:
        evidence += "; " + "; ".join(c.problems)
    return [Finding("cut_short", "warning", f"recording was cut short (process killed?) after t={c.end_t:.2f} s",
                    evidence, c.end_t, "the bridge process did not reach Recorder.close()")]


def resume_rejected(c: Context) -> list[Finding]:
    """A resume the server closed with 1011 because the session's old connection was still open.

    Reported for the real service in aicc2025/sip-to-ai PR #14: close the old socket before resuming.
    Evidence: the client core's ``Client(reason="resume_rejected")``, the emulator's ``resume_rejected``
    log entry, or a resumed connection closed 1011 by the server within seconds while the previous
    connection had not closed yet.
    """
    by_client = [(float(row["t"]), f"the client core recorded {row.get('action')}/resume_rejected"
                  + (f" on conn {int(row['conn'])}" if _text(row, "conn") else ""))
                 for _, row in _client(c, reason="resume_rejected").iterrows()]
    by_server = [(float(row["t"]), f"the emulator rejected the resume ({_text(row, 'detail') or '?'})")
                 for _, row in _emu(c, "in", "resume_rejected").iterrows()]
    n = max(len(by_client), len(by_server))  # the same rejections, seen from both sides
    seen: list[tuple[float, str]] = sorted(by_server[:2] + by_client[:2])
    if not seen:
        n = 0
        closes = c.closes
        connects = _times(c.ws, what="connect")
        for t, handle in _resumes(c):
            prev = connects[connects < t]
            old_open = prev.size and not [x for x in closes if prev[-1] < x.t <= t]
            rejected = [x for x in closes if t <= x.t <= t + 5.0 and x.code == 1011 and x.by in ("server", "unknown")]
            if old_open and rejected:
                n += 1
                seen.append((t, f"the connection resumed at {_s(t)} with handle {handle} was closed 1011 by the "
                                f"server at {_s(rejected[0].t)} while the connection opened at {_s(prev[-1])} was "
                                "still open"))
    if not seen:
        return []
    seen.sort()
    t0 = seen[0][0]
    later_ok = [t for t, _ in _resumes(c) if t > t0 + 0.5] or [t for t in _times(c.ws, what="connect") if t > t0 + 0.5]
    recovered = bool(later_ok) and c.gave_up is None and not len(_client(c, "give_up"))
    return [Finding(
        "resume_rejected", "warning" if recovered else "error",
        f"resume rejected while the old connection was open ({n}×)",
        "; ".join(x for _, x in seen[:4]) + (f"; a later connection opened at {_s(later_ok[0])}" if recovered else ""),
        t0, "the server closes (1011) a resume while the session's previous connection is still open "
            "(aicc2025/sip-to-ai PR #14): close the old socket first, then resume")]


def duplicate_or_lost_turns(c: Context) -> list[Finding]:
    """A user turn that reached the model twice, or is gone from its context, after a resume.

    From the client's own evidence: a turn re-sent although its first attempt had been heard or
    answered on the old connection (``duplicate_turn``); a resume with a handle that is a snapshot
    from before a turn's ActivityEnd, the turn not re-sent (``lost_turn``: resuming an old handle
    forgets later turns).  From the emulator's log when present: its ``duplicate_turn`` and
    ``lost_turn`` violations, the server's own view.
    """
    out = []
    acts = c.activities
    handles = _handle_times(c)
    resumes = _resumes(c)
    for row in acts:
        p = next((x for x in acts if x.turn == row.turn and x.attempt == row.attempt - 1), None)
        if p is None or p.end_t is None:
            continue
        lo, hi = p.start_t, row.start_t
        # Only a resumed snapshot taken after the first attempt reached the server holds the turn already.
        resumed = [(t, h) for t, h in resumes if t <= hi]
        if not resumed or (th := handles.get(resumed[-1][1])) is None or not th > p.end_t:
            continue
        why = None
        if p.answered:
            why = (f"answered at {_s(p.turn_complete_t)}" if p.turn_complete_t is not None
                   else "answered (interrupted)")
        elif heard := _transcripts(c, lo, hi):
            why = f"heard ({_quote(heard[0])})"
        if why is not None:
            out.append(Finding(
                "duplicate_turn", "error", f"turn {row.turn} re-sent after the server already had it",
                f"turn {row.turn} first sent on conn {p.conn} at {_s(lo)} was {why}; the connection "
                f"resumed at {_s(resumed[-1][0])} with handle {resumed[-1][1]} from {_s(th)}, after it; re-sent "
                f"on conn {row.conn} at {_s(hi)}", hi,
                "a turn the resumed snapshot already holds reached the model twice: re-send only turns the "
                "snapshot does not hold (transparent resumption's lastConsumedClientMessageIndex)"))
    for t, handle in resumes:
        th = handles.get(handle)
        if th is None:
            continue
        for row in acts:
            if row.end_t is None or not th < row.end_t < t:
                continue
            if not any(x.turn == row.turn and x.start_t > t for x in acts):
                out.append(Finding(
                    "lost_turn", "error", f"turn {row.turn} lost by resuming an older snapshot",
                    f"resumed at {_s(t)} with handle {handle} from {_s(th)}; turn {row.turn}'s ActivityEnd at "
                    f"{_s(row.end_t)} came after that snapshot and was not re-sent", t,
                    "a resumption handle is a snapshot of the conversation when it was issued: turns after it "
                    "are gone on resume unless re-sent"))
    for kind in ("duplicate_turn", "lost_turn"):
        for _, row in _emu(c, "violation", kind).iterrows():
            out.append(Finding(kind, "error", f"{kind.replace('_', ' ')} (emulator's log)",
                               f"the emulator flagged {kind} at {_s(float(row['t']))} on conn "
                               f"{_text(row, 'conn') or '?'}: {_text(row, 'detail') or ''}", float(row["t"]),
                               "the server's own view of the conversation after a resume (emulator.jsonl)"))
    return out


def gave_up(c: Context) -> list[Finding]:
    """The bridge's terminal decision: it stopped trying (``Client(action="give_up")``, session.json ``gave_up``)."""
    rows = _client(c, "give_up")
    if len(rows):
        r = rows.iloc[-1]
        t: float | None = float(r["t"])
        reason, detail = _text(r, "reason") or "?", _text(r, "detail")
    elif c.gave_up is not None:
        t, reason, detail = None, str(c.gave_up.get("reason", "?")), c.gave_up.get("detail")
    else:
        return []
    return [Finding(
        "gave_up", "error", f"the bridge gave up: {reason}",
        f"give_up ({reason})" + (f" at {_s(t)}" if t is not None else "") + (f": {detail}" if detail else ""), t,
        GIVE_UP_REASONS.get(reason, "the bridge's recovery reached its bound"))]


GIVE_UP_REASONS = {  # connection.Reason values the client core gives up with
    "connect_failed": "the first connection could not be opened (endpoint, key or model)",
    "reconnect_limit": "every reconnect attempt failed: the endpoint stayed unreachable or kept closing",
    "reconnect_off": "reconnecting is switched off, so the first lost connection ended the session",
    "resend_limit": "a turn was re-sent the maximum number of times and never answered",
    "response_timeout": "the last turn's answer never came within the response timeout",
    "greeting_unanswered": "the greeting got no answer: the session never started",
    "resume_rejected": "the server kept rejecting the resume (old connection still open?)",
}
