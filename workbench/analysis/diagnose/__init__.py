"""Diagnosis of a recording: which failure happened, with the evidence, and its likely cause.

Sans-I/O: every rule is a plain function over a ``Context`` (``context.py``: the recording's events
split by kind, the session's settings, the activities of ``analysis.activities``, the emulator's log
when present) and returns findings.  Nothing here touches a socket; reading the recording and the
``workbench diagnose`` command line are the callers' (``ui/cli.py``).

The rules test the hypotheses of DESIGN.md section 3 and the real service's behaviours of
issue 12, grouped by what they judge:

- ``signals.py``, the turn signals: no ActivityEnd (Failure B), frames stopped in a turn, audio
  outside an activity, empty activities, ActivityEnd without a start;
- ``responses.py``, the server's answers and keepalive: Failure A told apart as never heard /
  heard but not answered / empty answer / late answer (and a late answer that hides the next
  turn's Failure A); the four causes of ``1011 keepalive ping timeout`` (a late pong while the
  server was alive, the receive loop stopped with frames unread, the event loop blocked, a stall
  when an answer was due), judged per connection; loop lag, floods, the watchdog, barge-in;
- ``connection.py``, the connection and the session: close codes, goAway, reconnects and
  resumption (rejected resume, duplicate and lost turns), errors, a cut-short recording, the
  bridge giving up.

``report.py`` holds the one registry ``RULES`` and ``diagnose``: a session with no ``error`` or
``warning`` finding yields exactly one finding, ``healthy``, whose evidence carries the summary and
any ``info`` notes.
"""

from workbench.analysis.diagnose.connection import (
    CLOSE_CODES,
    GIVE_UP_REASONS,
    close,
    cut_short,
    duplicate_or_lost_turns,
    errors,
    gave_up,
    go_away,
    reconnects,
    resume_rejected,
)
from workbench.analysis.diagnose.context import (
    SEVERITY_RANK,
    Context,
    Finding,
    KeepaliveCause,
    Ping,
    PingOutcome,
    Severity,
    WsClose,
    context,
)
from workbench.analysis.diagnose.report import RULES, diagnose, format_findings, summary
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

__all__ = [
    "CLOSE_CODES", "GIVE_UP_REASONS", "RULES", "SEVERITY_RANK", "Context", "Finding", "KeepaliveCause", "Ping",
    "PingOutcome", "Severity", "WsClose", "activity_end_without_start", "audio_after_activity_end",
    "audio_before_activity_start", "barge_in", "close", "context", "cut_short", "diagnose", "duplicate_or_lost_turns",
    "empty_activity", "errors", "format_findings", "frames_stopped_in_turn", "gave_up", "go_away",
    "late_answer_masks_next_turn", "late_pongs", "loop_lag", "no_activity_end", "no_response_after_activity_end",
    "receive_loop_idle", "reconnects", "resume_rejected", "server_flood", "summary", "unanswered_pings", "watchdog",
]
