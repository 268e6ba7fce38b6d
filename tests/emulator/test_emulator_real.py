"""The emulator's ``real`` profile: each behaviour of the public record through the sans-I/O core with exact
times, then through the real google-genai SDK over TLS (its own parsing of every message the emulator sends).

Sources are cited beside the behaviours in ``workbench/emulator/core.py``; the README's table lists them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable
from typing import Any

import numpy as np
import pytest
import websockets
from conftest import run_until
from google import genai
from google.genai import _live_converters, errors, types

from workbench.emulator import PROFILES, Close, Emulator, EmulatorConfig, SendJson, SendPong, SessionCore, parse_fault
from workbench.emulator.core import DEADLINE, MODEL_RATE, Conversation, model_known
from workbench.io import live
from workbench.ui import cli

MODEL = live.DEFAULT_MODEL
LOUD = (np.sin(np.arange(1600) / 3) * 8000).astype(np.int16)  # 100 ms of a loud tone at 16 kHz


def pcm(k: int) -> bytes:
    """100 ms of distinct audio per ``k``: a turn's identity is the hash of its audio bytes."""
    return (LOUD + k).astype("<i2").tobytes()


def audio_msg(data: bytes) -> dict:
    return {"realtimeInput": {"audio": {"data": base64.urlsafe_b64encode(data).decode(),
                                        "mimeType": "audio/pcm;rate=16000"}}}


START = {"realtimeInput": {"activityStart": {}}}
END = {"realtimeInput": {"activityEnd": {}}}


def setup_msg(model: str = MODEL, **extra: Any) -> dict:
    setup: dict[str, Any] = {"model": f"models/{model}", "generationConfig": {"responseModalities": ["AUDIO"]},
                             "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}}
    for key, value in extra.items():
        if key == "activityHandling":
            setup["realtimeInputConfig"]["activityHandling"] = value
        else:
            setup[key] = value
    return {"setup": setup}


def real(**kw: Any) -> EmulatorConfig:
    """The real profile with exact answer timing (no random latency), unless a test asks for it."""
    return EmulatorConfig(**{"latency_s": 0.2, "setup_s": 0.0, **kw})


class Conv:
    """Conversations shared by several cores, as the server shell shares them."""

    def __init__(self) -> None:
        self.handles: dict[str, Conversation] = {}
        self.all: list[Conversation] = []

    def new(self) -> Conversation:
        conv = Conversation(len(self.all) + 1)
        self.all.append(conv)
        return conv

    def core(self, config: EmulatorConfig, conn: int = 0, t: float = 0.0, faults: tuple[str, ...] = (),
             **setup_kw: Any) -> SessionCore:
        core = SessionCore(config, conn, self.handles, self.new, [parse_fault(f) for f in faults])
        out = core.receive(t, setup_msg(**setup_kw))
        if config.setup_s == 0:
            assert isinstance(out[0], SendJson) and "setupComplete" in out[0].payload
        return core


def make_core(config: EmulatorConfig | None = None, faults: tuple[str, ...] = (), **setup_kw: Any) -> SessionCore:
    return Conv().core(config or real(), faults=faults, **setup_kw)


def user_turn(core: SessionCore, t: float, k: int = 0, n_audio: int = 3) -> list:
    """activityStart at t, n_audio chunks 0.1 s apart, activityEnd at t + 0.1 * n_audio."""
    out = core.receive(t, START)
    for i in range(n_audio):
        out += core.receive(t + 0.1 * i, audio_msg(pcm(k)))
    return out + core.receive(t + 0.1 * n_audio, END)


def sc(payload: dict) -> dict:
    return payload.get("serverContent", {})


def kinds(core: SessionCore, direction: str = "out") -> list[str]:
    return [e.kind for e in core.log if e.direction == direction]


def rules(core: SessionCore) -> list[str]:
    return [v.rule for v in core.violations]


# -- 8. profiles ------------------------------------------------------------------------------------------------

def test_profiles_fill_every_behaviour_and_a_field_overrides_its_profile():
    ideal = EmulatorConfig(profile="ideal")
    assert ideal.latency_s == 0.15 and ideal.pong_delay_s == (0.0, 0.0) and not ideal.barge_in
    assert ideal.outside_audio == "discard" and ideal.connection_s is None and ideal.handle_every_s is None
    default = EmulatorConfig()
    assert default.profile == "real" and default.pong_delay_s == (8.0, 30.0) and default.connection_s == 600
    assert default.outside_audio == "strict" and default.chunk_ms == (200.0, 240.0) and default.latency_s is None
    assert set(PROFILES["ideal"]) == set(PROFILES["real"])
    for name in PROFILES["real"]:
        assert getattr(EmulatorConfig(profile="real"), name) == EmulatorConfig(**{name: PROFILES["real"][name]}) \
            .__dict__[name]
    mixed = EmulatorConfig(profile="ideal", pong_delay_s=5, barge_in=True)
    assert mixed.pong_delay_s == (5.0, 5.0) and mixed.barge_in and mixed.latency_s == 0.15
    assert mixed.replace(connection_s=3).connection_s == 3 and mixed.replace(connection_s=3).barge_in
    with pytest.raises(ValueError, match="profile must be one of"):
        EmulatorConfig(profile="kind")
    with pytest.raises(ValueError, match="pong_delay_s"):
        EmulatorConfig(pong_delay_s=(3, 1))


def test_draws_are_reproducible_per_seed():
    def draws(seed: int) -> list[Any]:
        core = make_core(EmulatorConfig(seed=seed, setup_s=0.0))
        core.ping(0.5, b"a")
        user_turn(core, 1.0, 1)
        return [(round(t, 6), getattr(a, "payload", a)) for t, a in run_until(core, 40.0)]

    assert draws(1) == draws(1) and draws(1) != draws(2)


# -- 1. late pongs ----------------------------------------------------------------------------------------------

def test_pongs_are_late_in_real_in_order_and_instant_in_ideal():
    core = make_core(EmulatorConfig(setup_s=0.0))
    assert core.ping(1.0, b"p1") == [] and core.ping(2.0, b"p2") == []
    sent = [(t, a) for t, a in run_until(core, 100.0) if isinstance(a, SendPong)]
    assert [a.data for _, a in sent] == [b"p1", b"p2"]
    delays = [a.at_t - a.ping_t for _, a in sent]
    assert 8.0 <= delays[0] <= 30.0 and sent[1][1].at_t >= sent[0][1].at_t  # never overtakes the earlier pong
    logged = [e for e in core.log if e.kind == "pong"]
    assert [e.detail for e in logged] == [f"delay {d:.3f} s" for d in delays]
    ideal = make_core(EmulatorConfig(profile="ideal"))
    assert ideal.ping(1.0, b"x") == [SendPong(b"x", 1.0, 1.0)]
    fixed = make_core(EmulatorConfig(profile="ideal", pong_delay_s=2.5))
    fixed.ping(1.0, b"y")
    assert run_until(fixed, 10.0) == [(3.5, SendPong(b"y", 1.0, 3.5))]
    slow = make_core(EmulatorConfig(profile="ideal"), faults=("slow-pong:4",))
    slow.ping(1.0, b"z")
    assert run_until(slow, 10.0) == [(5.0, SendPong(b"z", 1.0, 5.0))]


# -- 2. barge-in ------------------------------------------------------------------------------------------------

def test_activity_start_during_an_answer_interrupts_it():
    core = make_core(real(reply_s=2.0))
    user_turn(core, 0.0, 1)  # activityEnd at 0.3, answer from 0.5
    before = run_until(core, 0.9)
    assert any("modelTurn" in sc(a.payload) for _, a in before if isinstance(a, SendJson))
    out = core.receive(1.0, START)
    assert [a.payload for a in out] == [{"serverContent": {"interrupted": True}},
                                        {"serverContent": {"turnComplete": True}, "usageMetadata": out[1].payload[
                                            "usageMetadata"]}]
    assert core.log[-3].kind == "interrupted" and core.log[-2].detail == "interrupted"
    assert all("modelTurn" not in sc(a.payload) and "generationComplete" not in sc(a.payload)
               for _, a in run_until(core, 10.0) if isinstance(a, SendJson))  # the rest of the answer is gone
    assert "generation_complete" not in kinds(core)
    core.receive(1.1, audio_msg(pcm(2)))
    core.receive(1.2, END)
    after = [a.payload for _, a in run_until(core, 10.0) if isinstance(a, SendJson)]
    assert any("modelTurn" in sc(p) for p in after) and sc(after[-1]).get("turnComplete")


def test_barge_in_cancels_a_pending_tool_call():
    core = make_core(real(tool_call_turns=(1,)), tools=[{"functionDeclarations": [{"name": "lookup"}]}])
    user_turn(core, 0.0, 1)
    calls = [a.payload for _, a in run_until(core, 1.0) if "toolCall" in a.payload]
    assert calls and core.busy
    out = core.receive(2.0, START)
    assert out[0].payload == {"toolCallCancellation": {"ids": ["call-1-1"]}}
    assert sc(out[1].payload) == {"interrupted": True} and sc(out[2].payload)["turnComplete"]
    assert not core.busy
    core.receive(2.1, {"toolResponse": {"functionResponses": [{"id": "call-1-1", "response": {}}]}})
    assert rules(core) == ["tool_response_unknown_id"]  # the call was cancelled


def test_no_interruption_keeps_answering_without_interleaving():
    core = make_core(real(reply_s=2.0), activityHandling="NO_INTERRUPTION")
    user_turn(core, 0.0, 1)
    sent = run_until(core, 0.9)
    assert core.receive(1.0, START) == []
    core.receive(1.0, audio_msg(pcm(2)))
    core.receive(1.1, END)  # answer 2 would start at 1.3 if answers could overlap
    sent += run_until(core, 20.0)
    ends = [t for t, a in sent if sc(a.payload).get("turnComplete")]
    audio = [(t, len(base64.b64decode(sc(a.payload)["modelTurn"]["parts"][0]["inlineData"]["data"])))
             for t, a in sent if "modelTurn" in sc(a.payload)]
    one_answer = int(2.0 * MODEL_RATE) * 2
    assert len(ends) == 2 and "interrupted" not in kinds(core)
    assert sum(n for t, n in audio if t < ends[0]) == one_answer  # the first answer whole before its end ...
    assert sum(n for t, n in audio if t >= ends[0]) == one_answer  # ... and the second from then on


def test_ideal_answers_overlap_as_before():
    core = make_core(EmulatorConfig(profile="ideal", reply_s=2.0))
    user_turn(core, 0.0, 1)
    run_until(core, 0.9)
    assert core.receive(1.0, START) == []


# -- 3. answer timing and shape -----------------------------------------------------------------------------------

def test_answer_shape_chunks_bursts_generation_then_turn_complete_after_playback():
    core = make_core(real(reply_s=2.0), inputAudioTranscription={}, outputAudioTranscription={})
    user_turn(core, 0.0, 1)  # activityEnd at 0.3
    sent = [(t, a.payload) for t, a in run_until(core, 10.0) if isinstance(a, SendJson)]
    audio = [(t, base64.b64decode(sc(p)["modelTurn"]["parts"][0]["inlineData"]["data"])) for t, p in sent
             if "modelTurn" in sc(p)]
    sizes = [len(b) for _, b in audio]
    assert all(9_600 <= n <= 11_520 for n in sizes[:-1]) and sum(sizes) == 2.0 * MODEL_RATE * 2
    gaps = np.diff([t for t, _ in audio])
    assert (gaps < 0.01).any() and (gaps > 0.05).any()  # bursts, then a pause
    assert audio[-1][0] - audio[0][0] < 2.0  # faster than real time
    assert audio[0][0] == pytest.approx(0.5)  # latency 0.2 after activityEnd
    gen = next(t for t, p in sent if sc(p).get("generationComplete"))
    end_t, end = next((t, p) for t, p in sent if sc(p).get("turnComplete"))
    assert gen > audio[-1][0] and end_t >= audio[0][0] + 2.0 and end_t > gen + 0.5
    assert end["usageMetadata"]["totalTokenCount"] > 0 and end["usageMetadata"]["responseTokensDetails"]
    assert any("inputTranscription" in sc(p) for _, p in sent) and any("outputTranscription" in sc(p) for _, p in sent)
    quiet = make_core(real())
    user_turn(quiet, 0.0, 1)
    assert not any("inputTranscription" in sc(a.payload) or "outputTranscription" in sc(a.payload)
                   for _, a in run_until(quiet, 10.0))  # not asked for in the setup


def test_latency_grows_over_the_session_with_spikes():
    def first_audio(config: EmulatorConfig, t: float) -> float:
        core = make_core(config)
        user_turn(core, t, 1)
        return next(u for u, a in run_until(core, t + 60) if "modelTurn" in sc(a.payload)) - (t + 0.3)

    early = EmulatorConfig(setup_s=0.0, spike_p=0.0)
    assert 0.3 <= first_audio(early, 0.0) <= 0.6
    assert 1.2 <= first_audio(early, 400.0) <= 1.4  # past latency_ramp_s
    assert 7.0 <= first_audio(EmulatorConfig(setup_s=0.0, spike_p=1.0), 0.0) <= 15.0


# -- 4. resumption ------------------------------------------------------------------------------------------------

def updates(sent: list[tuple[float, Any]]) -> list[tuple[float, dict]]:
    return [(t, a.payload["sessionResumptionUpdate"]) for t, a in sent
            if isinstance(a, SendJson) and "sessionResumptionUpdate" in a.payload]


def test_handles_about_every_second_not_resumable_while_generating():
    core = make_core(real(reply_s=2.0), sessionResumption={})
    user_turn(core, 0.0, 1)  # answer 0.5 .. ~2.6
    ups = updates(run_until(core, 6.0))
    times = [t for t, _ in ups]
    assert 4 <= len(ups) <= 7 and all(0.85 <= d <= 1.15 for d in np.diff(times))
    for t, u in ups:
        if 0.3 < t < 2.5:
            assert u == {"resumable": False}
        if t > 3.0:
            assert u["resumable"] and u["newHandle"].startswith("conv1-h")


def test_a_handle_is_a_snapshot_and_resuming_forks_from_it():
    convs = Conv()
    first = convs.core(real(), sessionResumption={})
    user_turn(first, 0.0, 1)
    ups = updates(run_until(first, 3.5))
    old = [u["newHandle"] for _, u in ups if u.get("newHandle")][0]  # after turn 1 was answered
    user_turn(first, 4.0, 2)
    run_until(first, 8.0)
    first.connection_lost(8.0, "1006")
    second = convs.core(real(), conn=1, t=9.0, sessionResumption={"handle": old})
    assert second.context == first.context[:1]  # turn 2 is forgotten
    assert [v.rule for v in convs.all[0].lost_turns()] == []  # nothing is final while a connection is open
    second.connection_lost(10.0, "1000")
    lost = convs.all[0].lost_turns()
    assert [v.rule for v in lost] == ["lost_turn"] and "user turn 2" in lost[0].detail and lost[0].t_mono == 10.0
    third = convs.core(real(), conn=2, t=11.0, sessionResumption={"handle": old})
    user_turn(third, 11.0, 2)  # the bridge re-sends turn 2: not lost any more
    user_turn(third, 13.0, 1)  # ... but turn 1 was already in the context
    assert rules(third) == ["duplicate_turn"] and "turn 1 of 2" in third.violations[0].detail
    third.connection_lost(15.0, "1000")
    assert convs.all[0].lost_turns() == []


def test_last_consumed_client_message_index_with_transparent():
    core = make_core(real(), sessionResumption={"transparent": True})
    user_turn(core, 0.0, 1)  # messages 0..4
    run_until(core, 3.5)
    core.receive(3.6, START)  # 5: an open activity is not consumed
    core.receive(3.7, audio_msg(pcm(2)))  # 6
    ups = updates(run_until(core, 4.5))
    assert ups[-1][1]["lastConsumedClientMessageIndex"] == 4
    plain = make_core(real(), sessionResumption={})
    user_turn(plain, 0.0, 1)
    assert all("lastConsumedClientMessageIndex" not in u for _, u in updates(run_until(plain, 3.5)))


def test_resume_rejections_open_expired_and_unknown():
    convs = Conv()
    first = convs.core(real(), sessionResumption={})
    handle = [u["newHandle"] for _, u in updates(run_until(first, 1.5)) if u.get("newHandle")][0]
    second = SessionCore(real(), 1, convs.handles, convs.new)
    assert second.receive(2.0, setup_msg(sessionResumption={"handle": handle})) == [Close(1011, "Internal error "
                                                                                               "encountered.")]
    assert second.log[-2].kind == "resume_rejected"
    first.connection_lost(2.5, "1000")
    late = SessionCore(real(session_s=None), 2, convs.handles, convs.new)  # only the handle's age matters here
    assert late.receive(1.0 + 7201, setup_msg(sessionResumption={"handle": handle}))[0].code == 1008
    assert "expired" in late.log[-2].detail
    ok = SessionCore(real(), 3, convs.handles, convs.new)
    assert ok.receive(3.0, setup_msg(sessionResumption={"handle": handle}))[0].payload["setupComplete"]


# -- 5. goAway by connection age and the session limit ----------------------------------------------------------

def test_go_away_by_connection_age_mid_answer_then_close_1011():
    core = make_core(real(connection_s=4.0, reply_s=3.0))
    user_turn(core, 2.0, 1)  # answer from 2.5 to ~5.6: the deadline cuts it
    sent = run_until(core, 10.0)
    ga = [(t, a.payload["goAway"]) for t, a in sent if isinstance(a, SendJson) and "goAway" in a.payload]
    assert ga == [(2.0, {"timeLeft": "2s"})]  # lead capped at half the 4 s limit
    assert sent[-1] == (4.0, Close(1011, DEADLINE))
    assert "turn_complete" not in kinds(core) and "model_audio" in kinds(core)


def test_session_limit_unless_context_window_compression():
    convs = Conv()
    core = convs.core(real(session_s=5.0, connection_s=100.0), sessionResumption={})
    sent = run_until(core, 6.0)
    assert sent[-1] == (5.0, Close(1011, DEADLINE)) and convs.all[0].ended
    handle = next(iter(convs.handles))
    again = SessionCore(real(), 1, convs.handles, convs.new)
    assert again.receive(6.0, setup_msg(sessionResumption={"handle": handle}))[0].code == 1008
    gone = Conv()
    short = gone.core(real(session_s=5.0), sessionResumption={})
    handle = [u["newHandle"] for _, u in updates(run_until(short, 2.5)) if u.get("newHandle")][0]
    short.connection_lost(3.0, "1000")
    after = SessionCore(real(session_s=5.0), 1, gone.handles, gone.new)
    assert after.receive(5.5, setup_msg(sessionResumption={"handle": handle}))[0].code == 1008  # session over
    free = make_core(real(session_s=5.0), contextWindowCompression={"slidingWindow": {}})
    assert not any(isinstance(a, Close) for _, a in run_until(free, 60.0))


# -- 6. five ways of not answering --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, fault", [
    ("no-response", ("no-response", None, False)),
    ("no-response:2", ("no-response", "2", False)),
    ("no-response:heard", ("no-response", "heard", False)),
    ("no-response:late:3@every", ("no-response", "late:3", True)),
    ("stall:4@start@every", ("stall", "4@start", True)),
    ("slow-pong:12", ("slow-pong", "12", False)),
])
def test_fault_specs_with_modes_and_every(spec, fault):
    f = parse_fault(spec)
    assert (f.name, f.arg, f.every_connection) == fault and parse_fault(f.spec()) == f


@pytest.mark.parametrize("spec, message", [
    ("no-response:deaf", "unknown mode 'deaf'"),
    ("no-response:heard:0", "user turn number"),
    ("go-away:2@sometimes", "only stall"),
])
def test_bad_fault_modes_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_fault(spec)
    assert "\n" not in str(info.value)


def answered(core: SessionCore, t_end: float) -> list[dict]:
    return [a.payload for _, a in run_until(core, t_end) if isinstance(a, SendJson)]


def test_no_response_modes():
    tx = {"inputAudioTranscription": {}}
    silent = make_core(faults=("no-response:silent",), **tx)
    user_turn(silent, 0.0, 1)
    assert answered(silent, 10.0) == []
    heard = make_core(faults=("no-response:heard",), **tx)
    user_turn(heard, 0.0, 1)
    assert answered(heard, 10.0) == [{"serverContent": {"inputTranscription": {"text": "[user audio 0.3 s]"}}}]
    empty = make_core(faults=("no-response:empty",), **tx)
    user_turn(empty, 0.0, 1)
    out = answered(empty, 10.0)
    assert [list(sc(p)) for p in out] == [["inputTranscription"], ["turnComplete"]]
    late = make_core(real(late_gap_s=5.0), faults=("no-response:late:2",), **tx)
    user_turn(late, 0.0, 1)
    run_until(late, 4.0)
    user_turn(late, 4.0, 2)  # activityEnd 4.3, transcript 4.5
    sent = [(t, a.payload) for t, a in run_until(late, 20.0) if isinstance(a, SendJson)]
    txs = [t for t, p in sent if "inputTranscription" in sc(p)]
    first_audio = next(t for t, p in sent if "modelTurn" in sc(p))
    assert txs == [pytest.approx(4.5), pytest.approx(9.5)] and first_audio == pytest.approx(9.7)
    noise = make_core(faults=("no-response:noise",), **tx)
    noise.receive(0.0, START)
    noise.receive(0.1, audio_msg(np.zeros(1600, np.int16).tobytes()))
    noise.receive(0.2, END)
    assert answered(noise, 5.0) == []
    user_turn(noise, 6.0, 1)  # speech is answered
    assert any("modelTurn" in sc(p) for p in answered(noise, 12.0))


def test_a_silent_turn_stays_in_the_context_of_the_next_handle():
    convs = Conv()
    core = convs.core(real(), faults=("no-response:1",), sessionResumption={})
    user_turn(core, 0.0, 1)
    ups = [u for _, u in updates(run_until(core, 2.0))]
    assert ups[-1]["resumable"]  # nothing is being generated: the unanswered turn is resumable, and consumed
    assert convs.all[0].snapshots[ups[-1]["newHandle"]].context == tuple(core.context) and len(core.context) == 1


# -- 7. strict input ----------------------------------------------------------------------------------------------

def test_strict_input_closes_1007_and_lenient_discards():
    core = make_core()
    assert core.receive(0.5, audio_msg(pcm(0))) == [Close(1007, "Request contains an invalid argument.")]
    lenient = make_core(real(outside_audio="discard"))
    assert lenient.receive(0.5, audio_msg(pcm(0))) == [] and rules(lenient) == ["audio_outside_activity"]
    chunks = make_core()
    chunks.receive(0.1, START)
    msg = {"realtimeInput": {"mediaChunks": [{"data": "AAAA", "mimeType": "audio/pcm"}]}}
    assert chunks.receive(0.2, msg)[-1] == Close(1007, "Request contains an invalid argument.")
    assert rules(chunks) == ["media_chunks"]


def test_message_before_setup_complete_closes_1007():
    core = SessionCore(EmulatorConfig(setup_s=0.1), 0, {}, lambda: Conversation(1))
    assert core.receive(0.0, setup_msg()) == []
    assert core.receive(0.05, START) == [Close(1007, "Request contains an invalid argument.")]
    assert rules(core) == ["message_before_setup_complete"]
    waits = SessionCore(EmulatorConfig(setup_s=0.1), 0, {}, lambda: Conversation(1))
    waits.receive(0.0, setup_msg())
    sent = run_until(waits, 0.1)
    assert sent[0][0] == 0.1 and "sessionId" in sent[0][1].payload["setupComplete"]
    assert waits.receive(0.2, START) == [] and rules(waits) == []


def test_unknown_model_closes_1008_and_the_project_models_are_known():
    core = SessionCore(EmulatorConfig(), 0, {}, lambda: Conversation(1))
    out = core.receive(0.0, setup_msg(model="gemini-1.0-pro"))
    assert out[0].code == 1008 and out[0].reason.startswith("models/gemini-1.0-pro is not found for API version")
    assert len(out[0].reason.encode()) <= 123
    for name in (live.DEFAULT_MODEL, cli.DEFAULT_LIVE_MODEL, "gemini-3.1-flash-live-preview",
                 "models/gemini-2.5-flash-native-audio-latest"):
        assert model_known(name), name


def test_realtime_text_is_answered_as_a_user_turn():
    core = make_core()
    core.receive(0.0, {"realtimeInput": {"text": "hello?"}})
    assert core.conversation.user_turns == 1 and core.context[0].startswith("text:")
    assert any("modelTurn" in sc(p) for p in answered(core, 5.0))
    ideal = make_core(EmulatorConfig(profile="ideal"))
    ideal.receive(0.0, {"realtimeInput": {"text": "hello?"}})
    assert answered(ideal, 5.0) == []


# -- through the real SDK over TLS ---------------------------------------------------------------------------------

def run(coro: Awaitable[Any], timeout_s: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def sdk_client(emu: Emulator, **ws_args: Any) -> genai.Client:
    return genai.Client(api_key="test", http_options=types.HttpOptions(
        base_url=emu.base_url, async_client_args={"ssl": emu.client_ssl_context(), **ws_args}))


def live_config(transcripts: bool = True, **kw: Any) -> types.LiveConnectConfig:
    tx = {"output_audio_transcription": types.AudioTranscriptionConfig(),
          "input_audio_transcription": types.AudioTranscriptionConfig()} if transcripts else {}
    rtc = kw.pop("realtime_input_config", None) or types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(disabled=True))
    return types.LiveConnectConfig(response_modalities=["AUDIO"], realtime_input_config=rtc, **tx, **kw)


class Reader:
    """A persistent receive loop (``receive()`` stops at each turn_complete), gathering every message with its
    arrival time, so a test can wait for what it expects."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.msgs: list[tuple[float, Any]] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                async for msg in self.session.receive():
                    self.msgs.append((loop.time(), msg))
        except Exception as exc:  # noqa: BLE001 -- the test reads it
            self.error = exc

    async def wait(self, pred: Any, timeout_s: float = 10.0, after: int = 0) -> Any:
        """The first message (from index ``after``) that ``pred`` accepts."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            for _, m in self.msgs[after:]:
                if pred(m):
                    return m
            if self.error is not None:
                raise self.error
            await asyncio.sleep(0.01)
        raise AssertionError("timed out waiting for a message")

    def count(self, pred: Any) -> int:
        return sum(1 for _, m in self.msgs if pred(m))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def speak(session: Any, k: int = 1, n_chunks: int = 3) -> None:
    await session.send_realtime_input(activity_start=types.ActivityStart())
    for _ in range(n_chunks):
        await session.send_realtime_input(audio=types.Blob(data=pcm(k), mime_type="audio/pcm;rate=16000"))
    await session.send_realtime_input(activity_end=types.ActivityEnd())


def sc_of(m: Any) -> Any:
    return m.server_content


FAST_REAL = {"latency_s": 0.05, "reply_s": 0.6}


def test_sdk_late_pongs_trip_the_default_style_keepalive_and_no_pings_survive():
    async def main(ping_interval: float | None) -> tuple[Emulator, BaseException | None]:
        async with Emulator(EmulatorConfig(**FAST_REAL, pong_delay_s=1.5)) as emu:
            client = sdk_client(emu, ping_interval=ping_interval, ping_timeout=0.6, close_timeout=0.3)
            err = None
            try:
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    reader = Reader(session)
                    await speak(session)
                    await reader.wait(lambda m: sc_of(m) and sc_of(m).turn_complete)
                    await asyncio.sleep(1.5)
                    if reader.error is not None:
                        raise reader.error
                    await reader.stop()
            except (errors.APIError, websockets.ConnectionClosed) as exc:
                err = exc
            return emu, err

    emu, err = run(main(0.3))
    assert err is not None and "keepalive ping timeout" in f"{err} {err.__context__}"
    assert any(e.kind == "ping" for e in emu.log)
    emu, err = run(main(None))  # ping_interval=None: the sip-to-ai fix
    assert err is None and emu.turns_answered == 1 and not any(e.kind == "ping" for e in emu.log)


def test_sdk_pong_goes_out_late_and_is_logged_with_its_delay():
    async def main() -> tuple[Emulator, float]:
        async with Emulator(EmulatorConfig(profile="ideal", pong_delay_s=0.4)) as emu:
            async with websockets.connect(f"wss://127.0.0.1:{emu.port}/ws", ssl=emu.client_ssl_context(),
                                          ping_interval=None) as ws:
                await ws.send(json.dumps(setup_msg()))
                await ws.recv()
                latency = await asyncio.wait_for(await ws.ping(b"hi"), 5)
            return emu, latency

    emu, latency = run(main())
    assert latency >= 0.4
    pongs = [e for e in emu.log if e.kind == "pong"]
    assert len(pongs) == 1 and pongs[0].detail.startswith("delay 0.4")


def test_sdk_barge_in_interrupted_then_turn_complete_and_tool_call_cancellation():
    async def main() -> tuple[list, list]:
        tools = [types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup", description="look up")])]
        async with Emulator(EmulatorConfig(**{**FAST_REAL, "reply_s": 3.0}, tool_call_turns=(2,))) as emu:
            async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config(tools=tools)) as session:
                reader = Reader(session)
                await speak(session, 1)
                await reader.wait(lambda m: m.data)
                await speak(session, 2)  # barge-in; turn 2 is answered with a toolCall
                await reader.wait(lambda m: m.tool_call)
                await session.send_realtime_input(activity_start=types.ActivityStart())  # barge-in again
                await reader.wait(lambda m: m.tool_call_cancellation)
                await asyncio.sleep(0.2)
                await reader.stop()
                return [m for _, m in reader.msgs], list(emu.log)

    msgs, log = run(main())
    flags = [("interrupted" if sc_of(m) and sc_of(m).interrupted else "turn_complete" if sc_of(m) and
              sc_of(m).turn_complete else "generation_complete" if sc_of(m) and sc_of(m).generation_complete else
              "cancel" if m.tool_call_cancellation else "tool" if m.tool_call else None) for m in msgs]
    flags = [f for f in flags if f]
    assert flags == ["interrupted", "turn_complete", "tool", "cancel", "interrupted", "turn_complete"]
    cancel = next(m for m in msgs if m.tool_call_cancellation)
    assert cancel.tool_call_cancellation.ids == ["call-1-2"]
    assert [e.kind for e in log if e.kind in ("interrupted", "tool_call_cancellation")] == [
        "interrupted", "tool_call_cancellation", "interrupted"]


def test_sdk_answer_shape_usage_metadata_session_id_and_transcripts_on_request():
    async def main(transcripts: bool) -> tuple[Any, list]:
        async with Emulator(EmulatorConfig(**{**FAST_REAL, "reply_s": 1.0})) as emu:
            async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config(transcripts)) as session:
                reader = Reader(session)
                await speak(session)
                await reader.wait(lambda m: sc_of(m) and sc_of(m).turn_complete)
                await reader.stop()
                return session.setup_complete, reader.msgs

    setup, msgs = run(main(True))
    assert setup.session_id and setup.session_id.startswith("emu-")
    audio = [(t, m.data) for t, m in msgs if m.data]
    assert all(9_600 <= len(d) <= 11_520 for _, d in audio[:-1]) and len(audio) >= 4
    gen_t = next(t for t, m in msgs if sc_of(m) and sc_of(m).generation_complete)
    end_t, end = next((t, m) for t, m in msgs if sc_of(m) and sc_of(m).turn_complete)
    assert audio[-1][0] <= gen_t <= end_t and end_t - audio[0][0] >= 1.0  # after the answer's playback time
    assert end.usage_metadata.total_token_count > 0
    assert end.usage_metadata.response_tokens_details[0].modality == types.MediaModality.AUDIO
    assert any(sc_of(m) and sc_of(m).input_transcription for _, m in msgs)
    _, msgs = run(main(False))
    assert not any(sc_of(m) and (sc_of(m).input_transcription or sc_of(m).output_transcription) for _, m in msgs)


def test_sdk_resumption_snapshots_fork_flag_lost_and_duplicate_turns_and_reject_resume_while_open():
    async def main() -> tuple[Emulator, list, BaseException | None]:
        config = EmulatorConfig(**FAST_REAL, handle_every_s=0.25)
        async with Emulator(config) as emu:
            client = sdk_client(emu)
            resumable = types.SessionResumptionConfig()
            async with client.aio.live.connect(model=MODEL, config=live_config(session_resumption=resumable)) as s:
                reader = Reader(s)
                await speak(s, 1)
                await reader.wait(lambda m: sc_of(m) and sc_of(m).turn_complete)
                update = await reader.wait(lambda m: m.session_resumption_update and
                                           m.session_resumption_update.resumable, after=len(reader.msgs))
                handle = update.session_resumption_update.new_handle  # a snapshot holding turn 1
                await speak(s, 2)
                await reader.wait(lambda m: reader.count(lambda x: sc_of(x) and sc_of(x).turn_complete) >= 2)
                ups = [m.session_resumption_update for _, m in reader.msgs if m.session_resumption_update]
                rejected = None
                try:  # the old connection is still open
                    async with client.aio.live.connect(model=MODEL, config=live_config(
                            session_resumption=types.SessionResumptionConfig(handle=handle))) as again:
                        await again.receive().__anext__()
                except errors.APIError as exc:
                    rejected = exc
                await reader.stop()
            resume = types.SessionResumptionConfig(handle=handle)  # forgets turn 2
            async with client.aio.live.connect(model=MODEL, config=live_config(session_resumption=resume)) as s:
                reader = Reader(s)
                await speak(s, 1)  # a duplicate: turn 1 is in the snapshot
                await reader.wait(lambda m: sc_of(m) and sc_of(m).turn_complete)
                await reader.stop()
        return emu, ups, rejected

    emu, ups, rejected = run(main())
    assert any(u.resumable is False and u.new_handle is None for u in ups)
    assert isinstance(rejected, errors.APIError) and rejected.code == 1011
    assert any(e.kind == "resume_rejected" for e in emu.log) and any(e.kind == "resumed" for e in emu.log)
    assert sorted(v.rule for v in emu.violations) == ["duplicate_turn", "lost_turn"]
    lost = next(v for v in emu.violations if v.rule == "lost_turn")
    assert "user turn 2" in lost.detail


def test_sdk_go_away_by_connection_age_then_1011_deadline():
    async def main() -> tuple[Any, BaseException | None]:
        async with Emulator(EmulatorConfig(**FAST_REAL, connection_s=1.6)) as emu:
            go_away = None
            try:
                async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                    reader = Reader(session)
                    go_away = (await reader.wait(lambda m: m.go_away)).go_away
                    await reader.task
                    if reader.error is not None:
                        raise reader.error
            except errors.APIError as exc:
                return go_away, exc
            return go_away, None

    go_away, err = run(main())
    assert go_away.time_left == "0.800s"
    assert isinstance(err, errors.APIError) and err.code == 1011 and DEADLINE in str(err)


def test_sdk_no_response_heard_empty_late_and_every_connection():
    async def main(spec: str, wait_s: float) -> tuple[list, Emulator]:
        async with Emulator(EmulatorConfig(**FAST_REAL, late_gap_s=0.6, faults=[parse_fault(spec)])) as emu:
            client = sdk_client(emu)
            for _ in range(2 if spec.endswith("@every") else 1):
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    reader = Reader(session)
                    await speak(session)
                    await asyncio.sleep(wait_s)
                    await reader.stop()
            return [m for _, m in reader.msgs], emu

    heard, emu = run(main("no-response:heard@every", 0.8))
    assert [sc_of(m).input_transcription.text for m in heard if sc_of(m)] == ["[user audio 0.3 s]"]
    assert emu.turns_answered == 0 and sum(1 for e in emu.log if e.kind == "fault") == 2  # both connections
    empty, _ = run(main("no-response:empty", 0.6))
    assert [m for m in empty if m.data] == [] and sc_of(empty[-1]).turn_complete
    late, _ = run(main("no-response:late", 2.0))
    txs = [i for i, m in enumerate(late) if sc_of(m) and sc_of(m).input_transcription]
    first_audio = next(i for i, m in enumerate(late) if m.data)
    assert len(txs) == 2 and txs[1] < first_audio and sc_of(late[-1]).turn_complete


def test_sdk_strict_input_unknown_model_text_turn_and_transparent_index():
    async def main() -> tuple[BaseException | None, BaseException | None, bool, list]:
        async with Emulator(EmulatorConfig(**FAST_REAL)) as emu:
            client = sdk_client(emu)
            outside = unknown = None
            try:
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    await session.send_realtime_input(audio=types.Blob(data=pcm(0), mime_type="audio/pcm;rate=16000"))
                    await session.receive().__anext__()
            except errors.APIError as exc:
                outside = exc
            try:
                async with client.aio.live.connect(model="gemini-1.0-pro", config=live_config()) as session:
                    await session.receive().__anext__()
            except errors.APIError as exc:
                unknown = exc
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                reader = Reader(session)
                await session.send_realtime_input(text="Can you hear me?")
                await reader.wait(lambda m: sc_of(m) and sc_of(m).turn_complete)
                await reader.stop()
                text_answered = any(m.data for _, m in reader.msgs)
            # transparent resumption: the SDK refuses it for the Developer API (``_SessionResumptionConfig_to_mldev``
            # raises), so a raw client sends the setup and the SDK's converter parses what comes back
            parsed = []
            async with websockets.connect(f"wss://127.0.0.1:{emu.port}/ws", ssl=emu.client_ssl_context()) as ws:
                await ws.send(json.dumps(setup_msg(sessionResumption={"transparent": True})))
                await ws.recv()  # setupComplete: anything sent before it closes 1007
                for m in (START, audio_msg(pcm(3)), END):
                    await ws.send(json.dumps(m))
                while len(parsed) < 40:
                    raw = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    msg = types.LiveServerMessage._from_response(
                        response=_live_converters._LiveServerMessage_from_mldev(raw), kwargs={})
                    parsed.append(msg)
                    u = msg.session_resumption_update
                    if u is not None and u.resumable and u.last_consumed_client_message_index is not None:
                        break
            return outside, unknown, text_answered, parsed

    outside, unknown, text_answered, parsed = run(main())
    assert isinstance(outside, errors.APIError) and outside.code == 1007
    assert isinstance(unknown, errors.APIError) and unknown.code == 1008 and "not found for API version" in str(
        unknown)
    assert text_answered
    last = parsed[-1].session_resumption_update
    assert last.last_consumed_client_message_index == 2 and last.new_handle


# -- 8. the command line ------------------------------------------------------------------------------------------

def test_emulator_flags_shape_the_config_and_run_demo_take_a_profile():
    from workbench.emulator.__main__ import build_parser, config_from_args, main

    args = build_parser().parse_args(["--profile", "ideal", "--pong-delay", "12", "--connection-s", "30",
                                      "--session-s", "60", "--strict", "--seed", "7",
                                      "--fault", "no-response:heard:2@every"])
    cfg = config_from_args(args)
    assert (cfg.profile, cfg.seed, cfg.pong_delay_s, cfg.connection_s, cfg.session_s) == ("ideal", 7, (12.0, 12.0),
                                                                                           30.0, 60.0)
    assert cfg.outside_audio == "strict" and cfg.latency_s == 0.15 and cfg.faults[0].every_connection
    lenient = config_from_args(build_parser().parse_args(["--lenient-audio"]))
    assert lenient.profile == "real" and lenient.outside_audio == "discard" and lenient.barge_in
    assert main(["--connection-s", "-1"]) == 2
    assert cli.build_parser().parse_args(["demo"]).profile == "real"
    assert cli.build_parser().parse_args(["run", "--audio", "x.wav", "--profile", "ideal"]).profile == "ideal"
    demo = cli.build_parser().parse_args(["demo", "--pong-delay", "9", "--connection-s", "12", "--seed", "3"])
    assert (demo.pong_delay, demo.connection_s, demo.session_s, demo.seed) == (9.0, 12.0, None, 3)
    assert cli.main(["demo", "--connection-s", "0"]) == 2  # one line, before anything starts


def test_real_profile_core_never_raises_on_random_sessions():
    """The fuzz of test_fuzz, on the real profile's new paths (barge-in, snapshots, limits, text turns, pongs)."""
    import random

    keys = ["realtimeInput", "activityStart", "activityEnd", "audio", "text", "mediaChunks", "clientContent",
            "toolResponse", "functionResponses", "sessionResumption", "handle", "turnComplete", "data", "id"]
    weird: list[Any] = [None, 0, "", "AAAA", base64.b64encode(pcm(1)).decode(), {}, [], True, "x" * 5]

    def value(rng: random.Random, depth: int = 0) -> Any:
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(weird)
        return {rng.choice(keys): value(rng, depth + 1) for _ in range(rng.randint(1, 3))}

    rng = random.Random(20261201)
    for i in range(1500):
        convs = Conv()
        core = convs.core(EmulatorConfig(seed=i, setup_s=0.0, connection_s=3.0, session_s=4.0, late_gap_s=1.0,
                                         tool_call_turns=(1, 3)),
                          faults=(rng.choice(["no-response:late", "no-response:empty", "slow-pong:1", "stall:1"]),),
                          sessionResumption={}, tools=[{"functionDeclarations": [{"name": "f"}]}])
        t = 0.0
        for _ in range(rng.randint(1, 8)):
            t += rng.uniform(0.0, 0.8)
            valid = rng.choice([START, END, audio_msg(pcm(rng.randint(0, 3))), {"realtimeInput": {"text": "hi"}},
                                {"toolResponse": {"functionResponses": [{"id": "call-1-1", "response": {}}]}}])
            msg = valid if i % 2 else rng.choice([valid, value(rng)])
            for a in core.receive(t, msg) + core.ping(t, b"p") + [a for _, a in run_until(core, t)]:
                assert not isinstance(a, Close) or a.code in (1000, 1007, 1008, 1011)
        if i % 2:  # well-formed input never reaches the "malformed" catch-all (that would hide a bug of ours)
            assert not [e for e in core.log if e.kind == "malformed"]
        run_until(core, t + 10)
        core.connection_lost(t + 10, "1000")
        second = SessionCore(EmulatorConfig(seed=i), 1, convs.handles, convs.new)
        handle = next(iter(convs.handles), "none")
        second.receive(t + 11, setup_msg(sessionResumption={"handle": handle}))
        convs.all[0].lost_turns()


def test_sdk_silent_and_noise_turns_get_nothing_and_media_chunks_close_1007():
    async def main(spec: str, audio: bytes) -> tuple[list, Emulator]:
        async with Emulator(EmulatorConfig(**FAST_REAL, faults=[parse_fault(spec)])) as emu:
            async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                reader = Reader(session)
                await session.send_realtime_input(activity_start=types.ActivityStart())
                await session.send_realtime_input(audio=types.Blob(data=audio, mime_type="audio/pcm;rate=16000"))
                await session.send_realtime_input(activity_end=types.ActivityEnd())
                await asyncio.sleep(0.6)
                await reader.stop()
            return [m for _, m in reader.msgs], emu

    silent, emu = run(main("no-response:silent", pcm(1)))
    assert [m for m in silent if m.server_content or m.data] == [] and emu.turns_answered == 0
    quiet, emu = run(main("no-response:noise", np.zeros(1600, np.int16).tobytes()))
    assert [m for m in quiet if m.server_content or m.data] == []
    assert any(e.kind == "fault" and "no speech" in (e.detail or "") for e in emu.log)

    async def chunks() -> BaseException | None:
        async with Emulator(EmulatorConfig(**FAST_REAL)) as emu:
            try:
                async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                    await session.send_realtime_input(activity_start=types.ActivityStart())
                    with pytest.warns(DeprecationWarning):  # send() is how the SDK still sends mediaChunks
                        await session.send(input=types.LiveClientRealtimeInput(
                            media_chunks=[types.Blob(data=pcm(1), mime_type="audio/pcm;rate=16000")]))
                    await session.receive().__anext__()
            except errors.APIError as exc:
                return exc
        return None

    err = run(chunks())
    assert isinstance(err, errors.APIError) and err.code == 1007
