"""The rule registry and the report: run every rule, or say the session is healthy; format findings for a terminal."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from workbench.analysis.diagnose.connection import (
    close,
    cut_short,
    duplicate_or_lost_turns,
    errors,
    gave_up,
    go_away,
    reconnects,
    resume_rejected,
)
from workbench.analysis.diagnose.context import SEVERITY_RANK, Context, Finding, _between, _max_lag, _s, context
from workbench.analysis.diagnose.responses import (
    barge_in,
    late_answer_masks_next_turn,
    late_pongs,
    loop_lag,
    no_response_after_activity_end,
    receive_loop_idle,
    server_flood,
    unanswered_pings,
    watchdog,
)
from workbench.analysis.diagnose.signals import (
    activity_end_without_start,
    audio_after_activity_end,
    audio_before_activity_start,
    empty_activity,
    frames_stopped_in_turn,
    no_activity_end,
)

if TYPE_CHECKING:
    from workbench.store.recording import Recording


RULES: tuple[Callable[[Context], list[Finding]], ...] = (
    no_activity_end, frames_stopped_in_turn, audio_after_activity_end, audio_before_activity_start,
    empty_activity, activity_end_without_start, no_response_after_activity_end, receive_loop_idle,
    unanswered_pings, late_pongs, loop_lag, close, go_away, reconnects, server_flood, errors, cut_short, watchdog,
    barge_in, resume_rejected, late_answer_masks_next_turn, duplicate_or_lost_turns, gave_up,
)


def summary(c: Context) -> str:
    """Turns, answered turns, pings answered, loop lag: one line for the healthy finding."""
    responses = c.responses
    answered = sum(1 for a in c.activities if a.end_t is not None
                   and _between(responses, a.end_t, min(a.next_start_t, c.end_t)).size)
    every = c.pings
    pings = [p for p in every if not p.pending]
    open_ = len(every) - len(pings)
    max_ms, _ = _max_lag(c)
    return (f"{len(c.activities)} turn(s), {answered} answered; pings answered {sum(p.answered for p in pings)}/"
            f"{len(pings)}" + (f" ({open_} without a verdict: closed or ended before their timeout)" if open_ else "")
            + f"; max loop lag {max_ms:.0f} ms; session length {_s(c.end_t)}")


def diagnose(rec: Recording, *, response_timeout_s: float = 5.0, lag_threshold_ms: float = 100.0) -> list[Finding]:
    """Run every rule; with no error or warning, return one ``healthy`` finding carrying the info notes."""
    c = context(rec, response_timeout_s=response_timeout_s, lag_threshold_ms=lag_threshold_ms)
    found = [f for rule in RULES for f in rule(c)]
    if any(f.severity != "info" for f in found):
        return sorted(found, key=lambda f: (SEVERITY_RANK[f.severity], math.inf if f.t is None else f.t))
    notes = "".join(f"; {f.evidence}" for f in found)
    return [Finding("healthy", "info", "healthy session", summary(c) + notes)]


def format_findings(findings: Sequence[Finding]) -> str:
    """Findings for the terminal: severity, code and time on one line, evidence and cause indented below."""
    lines = []
    for f in findings:
        when = "" if f.t is None else f"  t={f.t:.2f}s"
        lines.append(f"{f.severity.upper():<7} {f.code}{when}: {f.title}")
        lines.append(f"        evidence: {f.evidence}")
        if f.cause:
            lines.append(f"        likely cause: {f.cause}")
    n = {s: sum(f.severity == s for f in findings) for s in SEVERITY_RANK}
    lines.append(f"{n['error']} error(s), {n['warning']} warning(s), {n['info']} note(s)")
    return "\n".join(lines)
