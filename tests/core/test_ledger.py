"""The turn book with exact times: which turn a server message is about, what a barge-in ends."""

import numpy as np
import pytest

from workbench.core.ledger import TurnLedger
from workbench.core.sender import Outgoing
from workbench.io import live


def activity(n_audio=2):
    return [Outgoing("activity_start")] + [Outgoing("audio", np.zeros(320, np.int16))] * n_audio + [
        Outgoing("activity_end")]


def feed(led, items, t):
    return [led.add(item, t) for item in items]


def test_answers_go_to_the_oldest_closed_turn_in_order():
    led = TurnLedger()
    feed(led, activity(), 1.0)
    feed(led, activity(), 2.0)
    led.add(Outgoing("activity_start"), 3.0)  # an open activity cannot be answered yet
    assert [t.n for t in led.pending()] == [1, 2]
    assert led.server("turn_complete", 2.5)[0].n == 1
    assert led.server("turn_complete", 3.5)[0].n == 2
    assert led.server("turn_complete", 4.0) == (None, None)  # nothing closed is waiting
    assert led.answered == 2 and [t.n for t in led.unanswered()] == [3]


def test_evidence_is_filed_under_the_head_turn():
    led = TurnLedger()
    feed(led, activity(), 1.0)
    led.server("input_transcription", 1.2)
    led.server("model_audio", 1.5)
    turn = led.head()
    assert turn.heard_t == 1.2 and turn.progress_t == 1.5 and not turn.done_in_context
    led.server("generation_complete", 2.0)
    assert turn.done_in_context and not turn.answered  # in the context, turn_complete still to come


def test_interrupted_answer_counts_as_answered_and_its_turn_complete_is_not_the_next_turns():
    led = TurnLedger()
    feed(led, activity(), 1.0)
    led.server("model_audio", 1.3)
    led.add(Outgoing("activity_start"), 1.6)  # barge-in
    turn, what = led.server("interrupted", 1.7)
    assert turn.n == 1 and what == "interrupted" and turn.answered and turn.interrupted
    assert led.server("turn_complete", 1.75) == (None, None)  # the interrupted answer's own turn_complete
    led.add(Outgoing("audio", np.zeros(320, np.int16)), 2.0)
    led.add(Outgoing("activity_end"), 2.5)
    assert led.server("turn_complete", 3.0)[0].n == 2


def test_text_turn_is_turn_zero_and_tool_replies_belong_to_no_turn():
    led = TurnLedger()
    greet = led.add(live.TextTurn("greet"), 0.0)
    assert greet.n == 0 and greet.closed
    assert led.add(live.ToolReply([]), 0.1) is None
    assert led.add(Outgoing("audio", np.zeros(3, np.int16)), 0.2) is None  # audio outside any activity
    led.forget([greet])
    assert greet.items == []


def test_an_item_of_another_type_is_refused():
    led = TurnLedger()
    with pytest.raises(TypeError, match="not str"):
        led.add("activity_start", 0.0)  # a kind's name is not a message: matched on type, not on attributes
    assert led.turns == [] and led.activities == 0


def test_a_dropped_greeting_takes_a_late_answer_only_until_a_user_turn_closes():
    led = TurnLedger()
    greet = led.add(live.TextTurn("greet"), 0.0)
    greet.dropped = True
    assert led.pending() == [] and led.head() is greet
    feed(led, activity(), 5.0)
    assert led.head().n == 1  # the next turn_complete is the user's
