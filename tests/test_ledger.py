"""The turn ledger with exact times: what is answered, what is re-sent, when the watchdog fires."""

import numpy as np
import pytest

from workbench import live
from workbench.ledger import TurnLedger
from workbench.sender import Outgoing


def activity(n_audio=2):
    return [Outgoing("activity_start")] + [Outgoing("audio", np.zeros(320, np.int16))] * n_audio + [
        Outgoing("activity_end")]


def feed(led, items, t):
    for item in items:
        led.sent(item, t)


def test_answers_go_to_the_oldest_closed_turn_in_order():
    led = TurnLedger()
    feed(led, activity(), 1.0)
    feed(led, activity(), 2.0)
    led.sent(Outgoing("activity_start"), 3.0)  # an open activity cannot be answered yet
    assert led.pending == 2
    assert led.server("turn_complete", 2.5).n == 1
    assert led.server("turn_complete", 3.5).n == 2
    assert led.server("turn_complete", 4.0) is None  # nothing closed is waiting
    assert led.answered == 2 and [t.n for t in led.turns] == [3]


def test_progress_postpones_the_watchdog_and_none_disables_it():
    led = TurnLedger(watchdog_s=1.0)
    feed(led, activity(), 1.0)
    led.server("output_transcription", 1.8)  # the model is talking: not stuck
    assert led.watchdog(2.5) is None
    assert led.watchdog(2.85)[1] == pytest.approx(1.05)
    off = TurnLedger(watchdog_s=None)
    feed(off, activity(), 1.0)
    assert off.watchdog(1e6) is None


def test_greeting_text_turn_is_re_sent_when_unanswered_and_tool_replies_never():
    led = TurnLedger()
    greet = live.TextTurn("greet")
    led.sent(greet, 0.0)
    led.sent(live.ToolReply([]), 0.1)
    assert led.reconnected(1.0) == [greet]
    assert led.turns[0].sends == 2 and led.resent_turns == 1
