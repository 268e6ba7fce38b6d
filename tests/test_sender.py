import numpy as np

from workbench.sender import SendOrder


def kinds(out):
    return [o.msg for o in out]


def chunk(n=320):
    return np.ones(n, np.int16)


def test_start_sends_pre_roll_right_after_activity_start():
    s = SendOrder()
    out = s.start(chunk(4800), media_t=1.0)
    assert kinds(out) == ["activity_start", "audio"]
    assert out[1].audio.size == 4800


def test_audio_outside_activity_is_dropped_and_counted():
    s = SendOrder()
    assert s.audio(0.0, chunk()) == []
    assert s.dropped_samples == 320
    s.start(chunk(), 0.1)
    s.end(0.5)
    assert s.audio(0.6, chunk()) == []
    assert s.dropped_samples == 640


def test_full_turn_order():
    s = SendOrder()
    seq = s.start(chunk(), 0.0) + s.audio(0.02, chunk()) + s.audio(0.04, chunk()) + s.end(0.8)
    assert kinds(seq) == ["activity_start", "audio", "audio", "audio", "activity_end"]


def test_no_empty_activity_ever():
    s = SendOrder()
    assert s.start(np.zeros(0, np.int16), 0.0) == []  # held back: nothing to send yet
    assert s.end(0.5) == []  # and never sent, so no ActivityEnd either
    assert s.activities == 0
    out = s.start(None, 1.0) + s.audio(1.02, chunk()) + s.end(2.0)
    assert kinds(out) == ["activity_start", "audio", "activity_end"]


def test_double_start_and_double_end_are_ignored():
    s = SendOrder()
    s.start(chunk(), 0.0)
    assert s.start(chunk(), 0.1) == []
    assert kinds(s.end(0.5)) == ["activity_end"]
    assert s.end(0.6) == []
