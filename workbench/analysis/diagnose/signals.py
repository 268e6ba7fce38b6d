"""Rules on the turn signals: ActivityStart / ActivityEnd and the audio between them (Failure B and its kin)."""

from __future__ import annotations

import math

import numpy as np

from workbench.analysis.diagnose.context import (
    Context,
    Finding,
    WsClose,
    _between,
    _frame_gaps,
    _s,
    _select,
    _times,
    _vad,
)


def no_activity_end(c: Context) -> list[Finding]:
    """Speech started but no ActivityEnd followed before the next start or the end of the session (Failure B).

    Needs ``send`` activity_start/activity_end (wire stage preferred) and ``vad`` speech_start/speech_end.
    """
    out = []
    for a in c.activities:
        if a.end_t is not None or a.cut_t is not None:
            continue
        until = min(a.next_start_t, c.end_t)
        audio = (f"{a.n_audio} audio chunks sent {_s(a.audio_sent_from_t)}–{_s(a.audio_sent_until_t)}"
                 if a.n_audio and a.audio_sent_from_t is not None and a.audio_sent_until_t is not None
                 else "no audio sent")
        where = "before the next ActivityStart" if a.next_start_t < math.inf else "before the session ended"
        why = _why_no_end(c, a.start_t, until)
        out.append(Finding(
            "no_activity_end", "warning" if why.startswith(CLOSED_FIRST) else "error",
            f"ActivityStart at {_s(a.start_t)} was never followed by ActivityEnd",
            f"ActivityStart at {_s(a.start_t)}; {audio}; no ActivityEnd {where} at {_s(until)} "
            f"({until - a.start_t:.1f} s open)", a.start_t, why))
    starts = _vad(c, "speech_start")
    ends = _vad(c, "speech_end")
    act_starts = np.array([a.start_t for a in c.activities])
    for i, ts in enumerate(starts):
        nxt = float(starts[i + 1]) if i + 1 < len(starts) else math.inf
        if _between(ends, ts, nxt, closed_hi=False).size or _between(act_starts, ts - 1e-6, nxt, closed_hi=False).size:
            continue
        until = min(nxt, c.end_t)
        out.append(Finding(
            "no_activity_end", "error",
            f"speech started at {_s(ts)} but neither ActivityStart nor ActivityEnd was sent",
            f"turn detector speech_start at {_s(ts)}; no speech_end and no activity signal until {_s(until)}",
            float(ts), _why_no_end(c, float(ts), until)))
    return out


CLOSED_FIRST = "the connection closed"  # how a cause that blames the close (not the turn's own path) begins


def _why_no_end(c: Context, start: float, until: float) -> str:
    ends = _vad(c, "speech_end")
    decided = _between(ends, start, until)
    app_end = _between(_times(c.app_sends, msg="activity_end"), start, until)
    tried = [float(x[0]) for x in (decided, app_end) if x.size]
    gone = _closed_before(c, start, min(tried)) if tried else None
    if gone is not None:
        return (f"{CLOSED_FIRST} at {_s(gone.t)} ({gone.code} '{gone.reason}', closed by {gone.by}) before "
                f"the turn ended at {_s(min(tried))}: the ActivityEnd had no open socket to go to, so the close is the "
                "cause, not the send path (see close)")
    if decided.size:
        wire = c.sends["t"].to_numpy() if c.wire_sends and len(c.sends) else np.array([])
        app = c.app_sends["t"].to_numpy() if len(c.app_sends) else np.array([])
        last_wire = float(wire[wire <= decided[0]].max()) if (wire <= decided[0]).any() else None
        if last_wire is not None and app.size and (app > last_wire + 0.5).sum() == 0 and decided[0] - last_wire > 0.5:
            return (f"the turn detector decided speech_end at {_s(decided[0])} but no ActivityEnd left the socket: "
                    f"nothing was written after {_s(last_wire)}; the writer was stuck in a send that never "
                    "completed (the peer stopped reading, e.g. a server blocked on a client that stopped receiving)")
        return (f"the turn detector decided speech_end at {_s(decided[0])} but no ActivityEnd left the socket: "
                "the send path (send order / writer) lost it")
    if c.wire_sends and app_end.size:
        return (f"the application handed ActivityEnd to the SDK at {_s(app_end[0])} but it never left the socket "
                "(writer blocked or connection gone)")
    gaps = [g for g in _frame_gaps(c, c.silence_ms / 1000.0) if start <= g[1] and g[0] < until]
    if gaps:
        g0, g1, resumed = gaps[0]
        return (f"frames stopped at {_s(max(g0, start))} (track.recv() returned nothing for {g1 - max(g0, start):.1f} s"
                f"{'' if resumed else ', never resumed'}) and the detector did not end the turn on the clock: "
                "silence was measured by counting frames (Failure B)")
    gone = _closed_before(c, start, until)
    if gone is not None and until - gone.t < 1.0:  # the session ended with the socket: the turn had no time to end
        return (f"{CLOSED_FIRST} at {_s(gone.t)} ({gone.code} '{gone.reason}', closed by {gone.by}) while the user was "
                f"still speaking, {gone.t - start:.1f} s into the turn, and the session ended with it (see close and "
                "gave_up)")
    return ("frames kept arriving but the turn detector never measured enough silence "
            "(threshold too low for the noise floor, or a maximum turn length missing)")


def _closed_before(c: Context, lo: float, hi: float) -> WsClose | None:
    """The close in [lo, hi] after which no new connection opened before ``hi``: the socket was gone."""
    connects = c.connects
    for cl in c.closes:
        if lo <= cl.t <= hi + 0.05 and not [x for x in connects if cl.t < x <= hi]:
            return cl
    return None


def _vad_end_between(c: Context, lo: float, hi: float) -> float | None:
    """When the turn detector decided speech_end within [lo, hi], if it did."""
    ts = _vad(c, "speech_end")
    ts = ts[(ts >= lo) & (ts <= hi)]
    return float(ts[0]) if ts.size else None


def frames_stopped_in_turn(c: Context) -> list[Finding]:
    """Frames stopped while a turn was open for longer than the silence window: was the turn ended on the clock?

    Needs ``frame`` events (or ``frame_gap``); a gap still open at the end is measured to the last event.
    A gap during which ActivityEnd was still sent is an ``info`` note: the detector ends turns on the clock.
    """
    out = []
    min_s = c.silence_ms / 1000.0
    gaps = _frame_gaps(c, min_s)
    for a in c.activities:
        if a.cut_t is not None:
            continue  # its connection was replaced mid-turn: the re-sent activity carries the turn
        until = a.end_t if a.end_t is not None else min(a.next_start_t, c.end_t)
        for g0, g1, resumed in gaps:
            if not (g0 < until and g1 > a.start_t):
                continue
            g0 = max(g0, a.start_t)
            span = f"frames stopped at {_s(g0)} for {g1 - g0:.2f} s" + ("" if resumed else " (never resumed)")
            if a.end_t is not None and g0 <= a.end_t <= g1:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames stopped in the turn at {_s(g0)}; ActivityEnd sent on "
                    "the clock", f"{span}; ActivityEnd still sent at {_s(a.end_t)}, {(a.end_t - g0) * 1000:.0f} ms "
                    f"after the last frame", g0))
            elif a.end_t is None and (decided := _vad_end_between(c, g0, until)) is not None:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames stopped in the turn at {_s(g0)}; the detector "
                    "ended it on the clock", f"{span}; speech_end decided at {_s(decided)}, "
                    f"{(decided - g0) * 1000:.0f} ms after the last frame; the ActivityEnd itself never left "
                    "the socket (see no_activity_end)", g0))
            elif a.end_t is None:
                out.append(Finding(
                    "frames_stopped_in_turn", "error", f"frames stopped at {_s(g0)} in an open turn and no "
                    "ActivityEnd followed", f"turn opened at {_s(a.start_t)}; {span}; silence window "
                    f"{c.silence_ms:.0f} ms; no ActivityEnd before {_s(until)}", g0,
                    "the turn detector waits for frames to measure silence: track.recv() stops returning frames "
                    "in silence (DTX, muted track), so ActivityEnd is never sent (Failure B mechanism)"))
            elif (late := _arrived_late(c, g0, g1)) is not None:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames arrived late at {_s(g0)}; the turn rightly stayed open",
                    f"{span}, but the audio after the gap continues {late * 1000:.0f} ms of media time later: the "
                    "frames were delayed (a busy loop or the network), not silent, and the detector judged media time",
                    g0))
            else:
                out.append(Finding(
                    "frames_stopped_in_turn", "warning", f"frames stopped at {_s(g0)} in a turn that stayed open",
                    f"{span} (silence window {c.silence_ms:.0f} ms) yet ActivityEnd came only at {_s(a.end_t)}, "
                    f"after frames resumed", g0,
                    "silence measured by counting frames: the gap did not count as silence (Failure B mechanism)"))
    return out


def _arrived_late(c: Context, g0: float, g1: float) -> float | None:
    """Media time between the frames either side of an arrival gap, when it is well short of the gap.

    A frame's ``pts_s`` is its media time: after a real stop in the audio (DTX, a muted track) it
    jumps by about the gap; after frames that were only delayed it continues where it left off.
    """
    fr = _select(c.events, "frame")
    if "pts_s" not in fr or not len(fr):
        return None
    t = fr["t"].to_numpy(float)
    pts = fr["pts_s"].to_numpy(float)
    before, after = np.flatnonzero(t <= g0 + 1e-9), np.flatnonzero(t >= g1 - 1e-9)
    if not before.size or not after.size:
        return None
    media = float(pts[after[0]] - pts[before[-1]])
    return media if 0.0 <= media < 0.5 * (g1 - g0) else None  # negative: a new media origin, cannot tell


def audio_after_activity_end(c: Context) -> list[Finding]:
    """Audio sent after ActivityEnd and before the next ActivityStart (field report question 2).

    Uses wire-stage sends when the wire tap ran (that is the order the server saw), else app-stage.
    """
    by_end: dict[float, list[float]] = {}
    for t, end in c.stray_audio:
        if end is not None:
            by_end.setdefault(end, []).append(t)
    out = []
    stage = "wire" if c.wire_sends else "app"
    for end, ts in by_end.items():
        ms = [(t - end) * 1000.0 for t in ts]
        out.append(Finding(
            "audio_after_activity_end", "warning", f"{len(ts)} audio chunk(s) sent after ActivityEnd at {_s(end)}",
            f"{len(ts)} audio chunk(s) ({stage} stage) {min(ms):.0f}–{max(ms):.0f} ms after ActivityEnd at {_s(end)}, "
            "before the next ActivityStart", end,
            "audio outside an activity: the server discards it, or a strict server closes with 1007; two tasks "
            "calling send_realtime_input race (one writer draining one queue fixes the order)"))
    return out


def audio_before_activity_start(c: Context) -> list[Finding]:
    """Audio sent before the first ActivityStart: outside any activity, like audio after ActivityEnd."""
    ts = [t for t, end in c.stray_audio if end is None]
    if not ts:
        return []
    return [Finding(
        "audio_before_activity_start", "warning", f"{len(ts)} audio chunk(s) sent outside any activity",
        f"{len(ts)} audio chunk(s) {_s(ts[0])}–{_s(ts[-1])} with no ActivityStart before them", ts[0],
        "with manual activity detection, audio outside an activity is discarded or rejected (1007)")]


def empty_activity(c: Context) -> list[Finding]:
    """ActivityStart followed by ActivityEnd with no audio between them."""
    return [Finding(
        "empty_activity", "warning", f"empty activity {_s(a.start_t)}–{_s(a.end_t)}",
        f"ActivityStart at {_s(a.start_t)} and ActivityEnd at {_s(a.end_t)} with no audio between", a.start_t,
        "an empty activity gives the model nothing to answer; the send order must hold ActivityStart until audio")
        for a in c.activities if a.end_t is not None and a.n_audio == 0]


def activity_end_without_start(c: Context) -> list[Finding]:
    """ActivityEnd with no open activity (none started, or the previous one already ended)."""
    if not c.orphan_ends:
        return []
    ts = c.orphan_ends
    return [Finding(
        "activity_end_without_start", "warning", f"{len(ts)} ActivityEnd(s) without an open activity",
        "ActivityEnd at " + ", ".join(_s(t) for t in ts[:10]) + (" …" if len(ts) > 10 else ""), ts[0],
        "the turn detector and the send order disagree about whether a turn is open")]
