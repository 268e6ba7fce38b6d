import numpy as np
import pytest

from workbench.core.errors import InvalidState
from workbench.core.events import ClientMsg
from workbench.core.sender import OrderState, Outgoing, SendOrder


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


def test_start_while_open_and_end_while_idle_raise():
    s = SendOrder()
    with pytest.raises(InvalidState, match="end with no activity open"):
        s.end(0.0)
    s.start(chunk(), 0.0)
    assert s.state is OrderState.OPEN
    with pytest.raises(InvalidState, match="start while an activity is open"):
        s.start(chunk(), 0.1)
    assert kinds(s.end(0.5)) == ["activity_end"] and s.state is OrderState.IDLE
    with pytest.raises(InvalidState):
        s.end(0.6)
    s.start(None, 1.0)  # held: its ActivityStart waits for audio, and a second start is still misuse
    assert s.state is OrderState.HELD
    with pytest.raises(InvalidState, match="start while an activity is held"):
        s.start(chunk(), 1.1)
    assert s.end(1.5) == [] and s.activities == 1  # the refused calls changed nothing


def test_outgoing_kinds_are_the_enum_and_others_are_refused():
    assert Outgoing("audio", np.zeros(1, np.int16)).msg is ClientMsg.AUDIO
    with pytest.raises(ValueError, match="not 'tool_response'"):
        Outgoing("tool_response")
    with pytest.raises(ValueError):
        Outgoing("audio_end")


def test_chunking_gathers_audio_and_end_flushes_it_first():
    s = SendOrder(chunk_ms=100)  # 1600 samples at 16 kHz
    out = s.start(chunk(320), 0.0)
    assert kinds(out) == ["activity_start"]  # the start goes out at once, the audio waits for a full chunk
    for i in range(1, 4):
        assert s.audio(i * 0.02, chunk(320)) == []
    out = s.audio(0.08, chunk(320))
    assert kinds(out) == ["audio"] and out[0].audio.size == 1600 and out[0].media_t == 0.0
    out = s.audio(0.1, chunk(100)) + s.end(0.5)
    assert kinds(out) == ["audio", "activity_end"] and out[0].audio.size == 100 and out[0].media_t == 0.1


def test_chunking_keeps_every_sample_in_order():
    s = SendOrder(chunk_ms=60)
    rng = np.random.default_rng(1)
    pieces = [rng.integers(-1000, 1000, int(n), dtype=np.int16) for n in rng.integers(0, 500, 40)]
    out = s.start(pieces[0], 0.0)
    for p in pieces[1:]:
        out += s.audio(0.0, p)
    out += s.end(1.0)
    audio = [o.audio for o in out if o.msg == "audio"]
    assert all(a.size >= 960 for a in audio[:-1])
    np.testing.assert_array_equal(np.concatenate(audio), np.concatenate(pieces))
    assert kinds(out)[0] == "activity_start" and kinds(out)[-1] == "activity_end"


def test_bad_chunk_is_refused():
    with pytest.raises(ValueError, match="send chunk"):
        SendOrder(chunk_ms=-1)
