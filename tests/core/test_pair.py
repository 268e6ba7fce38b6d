"""The mic side and the server side paired with no socket and no event loop: exact times end to end.

Frames go into the mic pipeline (``core.pipeline``); its messages go through the client core
(``core.connection``) and out as the JSON google-genai writes for ``send_realtime_input`` (the SDK's own
converter, called directly); the emulator's session core (``emulator.core``) takes that JSON, and its
answers come back through the SDK's own parser and ``live.incoming`` into the client core's ledger
(``core.ledger``).  One clock: each step runs at the earliest time some part asks for (a frame's
arrival, the pipeline's, the client core's or the emulator's next deadline), so every time is exact.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from conftest import tone
from google.genai import _common, _live_converters, types

from workbench.core.connection import ClientCore, Connect, Record, RecoveryConfig, Send
from workbench.core.events import Vad
from workbench.core.pipeline import MicPipeline
from workbench.core.sender import Outgoing
from workbench.core.turns import TurnParams
from workbench.emulator import core as emu
from workbench.io import live

MIC_RATE = 48_000
FRAME = 960  # 20 ms
FRAME_S = FRAME / MIC_RATE
# Two spoken bursts (media seconds); under DTX the sender sends no packet outside them.
BURSTS = ((0.5, 1.5), (3.0, 3.8))
END_S = 6.0
# The forgiving server with exact answer times (a fixed 150 ms latency, 40 ms chunks, no playback wait), strict
# about audio outside an activity (it closes 1007) and flagging a turn that reaches its context twice.
EMU = emu.EmulatorConfig(profile="ideal", outside_audio="strict", flag_turns=True, greet=False)


def sdk_json(item: Outgoing) -> dict[str, Any]:
    """The JSON google-genai's ``send_realtime_input`` writes for a writer item (its own converter, as live.Writer
    calls it: audio as a 16 kHz Blob, the activity signals as their types)."""
    if item.msg == "audio":
        assert item.audio is not None
        kw: dict[str, Any] = {"audio": types.Blob(data=item.audio.astype("<i2").tobytes(),
                                                  mime_type="audio/pcm;rate=16000")}
    else:
        kw = {item.msg: types.ActivityStart() if item.msg == "activity_start" else types.ActivityEnd()}
    params = types.LiveSendRealtimeInputParameters.model_validate(kw)
    body = _common.convert_to_dict(_live_converters._LiveSendRealtimeInputParameters_to_mldev(from_object=params))
    return json.loads(json.dumps({"realtime_input": _common.encode_unserializable_types(body)}))


def sdk_parse(payload: dict[str, Any]) -> types.LiveServerMessage:
    """A server message as google-genai's receive loop turns the JSON into a ``LiveServerMessage``."""
    return types.LiveServerMessage._from_response(
        response=_live_converters._LiveServerMessage_from_mldev(json.loads(json.dumps(payload))), kwargs={})


def mic_frames() -> list[tuple[float, float, np.ndarray]]:
    """(arrival, pts, samples) of the bursts' 20 ms frames; each arrives when its last sample is captured."""
    out = []
    for a, b in BURSTS:
        x = tone(b - a, -20.0, 400.0, rate=MIC_RATE, dtype=np.int16)
        for i in range(0, x.size, FRAME):
            pts = a + i / MIC_RATE
            out.append((pts + FRAME_S, pts, x[i:i + FRAME]))
    return out


class MicPair:
    """Mic pipeline -> client core -> SDK JSON -> emulator core -> SDK parse -> client core, on one exact clock."""

    def __init__(self) -> None:
        self.pipeline = MicPipeline(TurnParams())  # no end model: silence alone ends the turn
        self.client = ClientCore(RecoveryConfig())
        self.conversations: dict[str, emu.Conversation] = {}
        self.conversation = emu.Conversation(id=1)
        self.server = emu.SessionCore(EMU, 0, self.conversations, lambda: self.conversation)
        self.vad: list[Vad] = []
        self.sent: list[tuple[float, Outgoing]] = []  # what went to the emulator, with its time
        self.records: list[Any] = []
        self.setup_done = False
        self.t = 0.0
        self.act(self.client.start(0.0))

    def act(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Connect):
                setup = {"model": f"models/{live.DEFAULT_MODEL}",
                         "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
                         "inputAudioTranscription": {}, "outputAudioTranscription": {}}
                self.from_server(self.server.receive(self.t, {"setup": setup}))
            elif isinstance(a, Send):
                self.sent.append((self.t, a.item))
                self.from_server(self.server.receive(self.t, sdk_json(a.item)))
            elif isinstance(a, Record):
                self.records.append(a.event)
            else:
                raise AssertionError(f"unexpected action {a}")

    def from_server(self, actions: list[Any]) -> None:
        for x in actions:
            assert isinstance(x, emu.SendJson), x  # no close, no pause: nothing went wrong
            if "setupComplete" in x.payload:
                self.setup_done = True
                self.act(self.client.opened(self.t, 1))
                continue
            for fact in live.incoming(sdk_parse(x.payload)):
                self.act(self.client.server(self.t, 1, fact))

    def mic(self, out: list[Any]) -> None:
        for o in out:
            if isinstance(o, Vad):
                self.vad.append(o)
            elif isinstance(o, Outgoing):
                self.act(self.client.send(self.t, o))

    def run(self, frames: list[tuple[float, float, np.ndarray]], t_end: float) -> None:
        k = 0
        while True:
            due = [d for d in (self.pipeline.next_deadline(), self.client.next_deadline(), self.server.next_due())
                   if d is not None]
            if k < len(frames):
                due.append(frames[k][0])
            if not due or min(due) > t_end:
                return
            self.t = max(self.t, min(due))
            if k < len(frames) and frames[k][0] <= self.t:
                self.mic(self.pipeline.frame(self.t, frames[k][1], frames[k][2]))
                k += 1
            else:
                self.mic(self.pipeline.tick(self.t))
            self.from_server(self.server.tick(self.t))
            self.act(self.client.tick(self.t))


@pytest.fixture(scope="module")
def pair() -> MicPair:
    p = MicPair()
    assert p.setup_done  # the ideal server answers the setup at once
    p.run(mic_frames(), END_S)
    p.server.connection_lost(p.t, "1000 client closed")
    return p


def test_each_burst_is_one_activity_ended_on_the_clock_at_the_exact_time(pair):
    # Expected from the input alone: media time goes onto the session clock by the first frame's arrival, so a
    # burst spoken over [a, b) is speech over [a, b) + FRAME_S; its ActivityEnd is due one silence window after
    # that, and under DTX no frame comes to bring it: the clock does, exactly on time.
    clock_of_media = FRAME_S
    silence_s = TurnParams().silence_ms / 1000
    starts = [v for v in pair.vad if v.decision == "speech_start"]
    ends = [v for v in pair.vad if v.decision == "speech_end"]
    assert [v.media_t for v in starts] == pytest.approx([a + clock_of_media for a, _ in BURSTS], abs=1e-6)
    assert [v.media_t for v in ends] == pytest.approx([b + clock_of_media for _, b in BURSTS], abs=1e-6)
    assert [v.t for v in ends] == pytest.approx([b + clock_of_media + silence_s for _, b in BURSTS], abs=1e-6)
    assert [v.reason for v in ends] == ["silence", "silence"]
    # ActivityStart, once min_speech_ms of the burst has been heard, at a frame's arrival (no tick needed)
    min_speech_s = TurnParams().min_speech_ms / 1000
    arrivals = {round(f[0], 6) for f in mic_frames()}
    for v, (a, b) in zip(starts, BURSTS, strict=True):
        assert a + clock_of_media + min_speech_s <= v.t + 1e-6 and round(v.t, 6) in arrivals and v.t < b


def test_the_server_saw_each_signal_when_the_pipeline_decided_it_and_every_sample_sent(pair):
    ends = [v.t for v in pair.vad if v.decision == "speech_end"]
    log = pair.server.log
    server_ends = [e.t_mono for e in log if e.direction == "in" and e.kind == "activity_end"]
    assert server_ends == pytest.approx(ends, abs=1e-9)  # no socket, no writer queue: the same instant
    assert pair.server.violations == [] and pair.conversation.lost_turns() == []
    # The audio the server decoded from the SDK's base64 is byte for byte what the pipeline sent, activity by
    # activity: the emulator names each user turn by a hash of its audio bytes.
    per_activity: list[bytes] = []
    for _, item in pair.sent:
        if item.msg == "activity_start":
            per_activity.append(b"")
        elif item.msg == "audio":
            per_activity[-1] += item.audio.astype("<i2").tobytes()
    keys = [hashlib.blake2b(pcm, digest_size=8).hexdigest() for pcm in per_activity]
    assert list(pair.conversation.received) == keys
    assert [t.n for t in pair.conversation.received.values()] == [1, 2]
    # each burst's audio went out whole (1 s and 0.8 s at 16 kHz), give or take the resampler's edge samples
    for pcm, (a, b) in zip(per_activity, BURSTS, strict=True):
        assert abs(len(pcm) // 2 - (b - a) * 16_000) <= 32


def test_the_ledger_files_each_answer_under_its_turn_at_the_servers_times(pair):
    ends = [v.t for v in pair.vad if v.decision == "speech_end"]
    turns = pair.client.ledger.turns
    assert [t.n for t in turns] == [1, 2] and pair.client.ledger.answered == 2
    assert [t.closed_t for t in turns] == pytest.approx(ends, abs=1e-9)
    out = [e for e in pair.server.log if e.direction == "out"]
    completes = [e.t_mono for e in out if e.kind == "turn_complete"]
    first_audio = [next(e.t_mono for e in out if e.kind == "model_audio" and e.t_mono >= end) for end in ends]
    # the ideal server: first audio one latency after ActivityEnd, turnComplete once reply_s of audio has gone out
    # at `pace` times real time
    cfg = pair.server.config
    assert first_audio == pytest.approx([end + cfg.latency_s for end in ends], abs=1e-9)
    assert completes == pytest.approx([fa + cfg.reply_s / cfg.pace for fa in first_audio], abs=1e-9)
    assert [t.answered_t for t in turns] == pytest.approx(completes, abs=1e-9)
    assert [t.heard_t for t in turns] == pytest.approx(first_audio, abs=1e-9)  # the transcript rides with it
    assert [t.audio_s for t in turns] == pytest.approx([cfg.reply_s] * 2, abs=1e-6)
    assert [t.sends for t in turns] == [1, 1] and not any(t.interrupted for t in turns)
    assert pair.records == []  # no watchdog, no reconnect, no re-send: nothing for the client core to decide
