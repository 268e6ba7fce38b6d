"""The Live API emulator: its sans-I/O core with exact times, then the real SDK and raw websockets over TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import websockets
from conftest import run_until
from google import genai
from google.genai import errors, types

from workbench.emulator import Close, Emulator, EmulatorConfig, PauseReading, SendJson, SessionCore, parse_fault
from workbench.emulator.core import MODEL_RATE, Activity, Conversation, Phase, speech_like

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
PCM_100MS = np.zeros(1600, np.int16).tobytes()  # 100 ms at 16 kHz


def ideal(**kw: Any) -> EmulatorConfig:
    """The forgiving server these tests were written for (the real profile has its own tests in test_emulator_real)."""
    return EmulatorConfig(profile="ideal", **kw)


# -- core: plain calls, exact times -------------------------------------------------------------------------------

def b64(pcm: bytes, urlsafe: bool = True) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(pcm).decode()


def setup_msg(manual: bool = True, tools: tuple[str, ...] = (), resumption: dict | None = None) -> dict:
    setup: dict[str, Any] = {"model": f"models/{MODEL}", "generationConfig": {"responseModalities": ["AUDIO"]}}
    if manual:
        setup["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    if tools:
        setup["tools"] = [{"functionDeclarations": [
            {"name": n, "parameters": {"type": "OBJECT", "properties": {"q": {"type": "STRING"}}, "required": ["q"]}}
            for n in tools]}]
    if resumption is not None:
        setup["sessionResumption"] = resumption
    return {"setup": setup}


START = {"realtimeInput": {"activityStart": {}}}
END = {"realtimeInput": {"activityEnd": {}}}
AUDIO = {"realtimeInput": {"audio": {"data": b64(PCM_100MS), "mimeType": "audio/pcm;rate=16000"}}}


def make_core(config: EmulatorConfig | None = None, conversations: dict | None = None, conn: int = 0,
              faults: tuple[str, ...] = (), **setup_kw: Any) -> SessionCore:
    """A core that has accepted a setup at t=0."""
    ids = iter(range(1, 100))
    core = SessionCore(config or ideal(), conn, {} if conversations is None else conversations,
                       lambda: Conversation(next(ids)), [parse_fault(f) for f in faults])
    assert core.receive(0.0, setup_msg(**setup_kw)) == [SendJson({"setupComplete": {}})]
    return core


def user_turn(core: SessionCore, t: float, n_audio: int = 3) -> list:
    out = core.receive(t, START)
    for i in range(n_audio):
        out += core.receive(t + 0.1 * i, AUDIO)
    return out + core.receive(t + 0.1 * n_audio, END)


def payloads(actions: list[tuple[float, Any]]) -> list[dict]:
    return [a.payload for _, a in actions if isinstance(a, SendJson)]


def rules(core: SessionCore) -> list[str]:
    return [v.rule for v in core.violations]


def test_answer_timing_is_exact_latency_then_paced_chunks():
    core = make_core()
    assert user_turn(core, 1.0) == []  # activityEnd at 1.3
    assert core.tick(1.449) == []
    first = core.tick(1.45)  # latency 0.15
    assert first[0].payload == {"serverContent": {"inputTranscription": {"text": "[user audio 0.3 s]"}}}
    assert "modelTurn" in first[1].payload["serverContent"]
    sent = [(1.45, a) for a in first] + run_until(core, 3.0)
    audio_t = [t for t, a in sent if "modelTurn" in a.payload.get("serverContent", {})]
    assert len(audio_t) == 25  # 1.0 s in 40 ms chunks
    assert np.allclose(np.diff(audio_t), 0.02)  # paced twice as fast as real time
    kinds = [e.kind for e in core.log if e.direction == "out"]
    assert kinds[-2:] == ["generation_complete", "turn_complete"]
    tc = next(e for e in core.log if e.kind == "turn_complete")
    assert tc.t_mono == pytest.approx(1.45 + 25 * 0.02)
    part = payloads(sent)[1]["serverContent"]["modelTurn"]["parts"][0]["inlineData"]
    assert part["mimeType"] == "audio/pcm;rate=24000"
    assert len(base64.b64decode(part["data"], validate=True)) == 960 * 2  # standard base64, 40 ms at 24 kHz
    words = "".join(p["serverContent"]["outputTranscription"]["text"] for p in payloads(sent)
                    if "outputTranscription" in p.get("serverContent", {}))
    assert len(words.split()) >= 3
    assert core.violations == []


def test_connection_phase_and_activity_window_are_one_state_each():
    ids = iter(range(1, 9))
    core = SessionCore(ideal(setup_s=0.1), 0, {}, lambda: Conversation(next(ids)))
    assert core.phase is Phase.AWAITING_SETUP and core.activity is Activity.NONE
    assert core.receive(0.0, setup_msg()) == []
    assert core.phase is Phase.SETTING_UP  # setupComplete is due at 0.1
    assert core.tick(0.1) == [SendJson({"setupComplete": {}})] and core.phase is Phase.READY
    core.receive(0.2, START)
    assert core.activity is Activity.OPEN
    core.receive(0.3, START)  # a client's bad signal is a violation, and the window stays open
    assert core.activity is Activity.OPEN and rules(core) == ["activity_start_while_open"]
    core.receive(0.4, AUDIO)
    core.receive(0.5, END)
    assert core.activity is Activity.ENDED
    core.receive(0.6, AUDIO)
    assert rules(core)[-1] == "audio_after_activity_end"
    core.connection_lost(0.7, "1000")
    core.connection_lost(0.8, "1000")  # the socket's end reported twice is still one close
    assert core.phase is Phase.CLOSED and core.closed
    assert core.receive(0.9, START) == [] and core.activity is Activity.ENDED  # nothing counts after the close
    assert [e.kind for e in core.log].count("client_closed") == 1


def test_snake_case_and_standard_base64_are_accepted_too():
    ids = iter(range(1, 9))
    core = SessionCore(ideal(), 0, {}, lambda: Conversation(next(ids)))
    setup = {"setup": {"model": "m", "realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}}
    assert core.receive(0.0, setup) == [SendJson({"setupComplete": {}})]
    core.receive(0.1, {"realtime_input": {"activity_start": {}}})
    odd = bytes(range(250, 256)) * 100  # makes '+' and '/' in standard base64
    core.receive(0.2, {"realtime_input": {"audio": {"data": b64(odd, urlsafe=False), "mime_type": "audio/pcm"}}})
    core.receive(0.3, {"realtime_input": {"media_chunks": [{"data": b64(odd), "mime_type": "audio/pcm"}]}})
    core.receive(0.4, {"realtime_input": {"activity_end": {}}})
    assert [e.n_bytes for e in core.log if e.kind == "audio"] == [600, 600]
    assert core.violations == []
    assert any("inputTranscription" in p.get("serverContent", {}) for p in payloads(run_until(core, 1.0)))


@pytest.mark.parametrize("messages, rule", [
    ([AUDIO], "audio_outside_activity"),
    ([START, AUDIO, END, AUDIO], "audio_after_activity_end"),
    ([START, END], "empty_activity"),
    ([END], "activity_end_without_start"),
    ([START, AUDIO, START], "activity_start_while_open"),
    ([{"realtimeInput": {"audioStreamEnd": True}}], "audio_stream_end_in_manual_mode"),
])
def test_each_manual_mode_violation_is_flagged(messages, rule):
    core = make_core()
    for i, m in enumerate(messages):
        assert not any(isinstance(a, Close) for a in core.receive(0.1 + i * 0.01, m))
    assert rules(core) == [rule]
    v = core.violations[0]
    assert v.t_mono == pytest.approx(0.1 + (len(messages) - 1) * 0.01) and v.conn == 0
    assert any(e.kind == "violation" and rule in (e.detail or "") for e in core.log)


def test_empty_activity_and_discarded_audio_get_no_answer():
    core = make_core()
    core.receive(0.1, AUDIO)
    core.receive(0.2, START)
    core.receive(0.3, END)
    assert payloads(run_until(core, 2.0)) == []


def test_activity_signals_with_automatic_detection_are_flagged_and_stream_end_answers():
    core = make_core(manual=False)
    core.receive(0.1, START)
    core.receive(0.2, AUDIO)
    core.receive(0.3, END)
    assert rules(core) == ["activity_signal_with_automatic_vad"] * 2
    core = make_core(manual=False)
    core.receive(0.1, AUDIO)  # no activity window needed with automatic detection
    core.receive(0.2, {"realtimeInput": {"audioStreamEnd": True}})
    assert core.violations == []
    assert any(p.get("serverContent", {}).get("turnComplete") for p in payloads(run_until(core, 2.0)))


def test_message_before_setup_closes_1007():
    core = SessionCore(ideal(), 0, {}, lambda: Conversation(1))
    assert core.receive(0.0, START) == [Close(1007, "Request contains an invalid argument.")]
    assert rules(core) == ["message_before_setup"]
    assert core.receive(0.1, setup_msg()) == []  # closed


def test_strict_outside_audio_closes_1007():
    core = make_core(ideal(outside_audio="strict"))
    assert core.receive(0.5, AUDIO) == [Close(1007, "Request contains an invalid argument.")]
    assert rules(core) == ["audio_outside_activity"]
    assert core.log[-1].kind == "close" and core.log[-1].detail.startswith("1007")


def test_bad_input_is_logged_and_closed():
    core = make_core()
    assert core.receive(0.1, {"realtimeInput": {"audio": {"data": "@@not base64@@"}}})[0].code == 1007
    core = make_core()
    assert core.receive(0.1, {"somethingNew": {}}) == []
    assert core.log[-1].kind == "unknown" and core.log[-1].detail == "somethingNew"
    assert core.receive(0.2, None)[0].code == 1007


def test_greeting_on_client_content_turn_complete_and_not_when_disabled():
    core = make_core()
    core.receive(0.5, {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "greet the candidate"}]}],
                                         "turnComplete": True}})
    sent = payloads(run_until(core, 2.0))
    assert "modelTurn" in sent[0]["serverContent"]  # no inputTranscription for a text turn
    assert sent[-1] == {"serverContent": {"turnComplete": True}}
    assert [e.detail for e in core.log if e.kind == "client_content"] == ["greet the candidate"]
    quiet = make_core(ideal(greet=False))
    quiet.receive(0.5, {"client_content": {"turns": [{"parts": [{"text": "hi"}]}], "turn_complete": True}})
    assert payloads(run_until(quiet, 2.0)) == []


def test_tool_call_waits_for_its_response_then_speaks():
    core = make_core(ideal(tool_call_turns=(2,)), tools=("a", "b", "c", "d"))
    user_turn(core, 0.0)
    run_until(core, 1.0)
    user_turn(core, 2.0)
    sent = payloads(run_until(core, 4.0))
    calls = [p["toolCall"]["functionCalls"] for p in sent if "toolCall" in p]
    assert calls == [[{"id": "call-1-2", "name": "b", "args": {"q": "example"}}]]
    assert not any("modelTurn" in p.get("serverContent", {}) for p in sent)
    core.receive(4.0, {"toolResponse": {"functionResponses": [{"id": "nope", "response": {}}]}})
    assert rules(core) == ["tool_response_unknown_id"]
    core.receive(4.1, {"tool_response": {"function_responses": [{"id": "call-1-2", "name": "b", "response": {}}]}})
    after = [(t, a) for t, a in run_until(core, 6.0) if t >= 4.1]
    assert after[0][0] == pytest.approx(4.25)
    assert payloads(after)[-1] == {"serverContent": {"turnComplete": True}}


def test_resumption_handles_keep_the_conversation_across_connections():
    conversations: dict = {}
    first = make_core(conversations=conversations, resumption={})
    user_turn(first, 0.0)
    updates = [p["sessionResumptionUpdate"] for p in payloads(run_until(first, 1.0)) if "sessionResumptionUpdate" in p]
    assert updates == [{"newHandle": "conv1-h1", "resumable": True}]
    second = make_core(ideal(tool_call_turns=(2,)), conversations, conn=1, tools=("x",),
                       resumption={"handle": "conv1-h1"})
    assert second.conversation is first.conversation
    user_turn(second, 2.0)
    assert any("toolCall" in p for p in payloads(run_until(second, 3.0)))  # the conversation's 2nd user turn
    ids = iter(range(5, 9))
    third = SessionCore(ideal(), 2, conversations, lambda: Conversation(next(ids)))
    assert third.receive(0.0, setup_msg(resumption={"handle": "bogus"})) == [
        Close(1008, "Invalid session resumption handle.")]


def test_resume_while_the_old_connection_is_open_can_be_rejected():
    conversations: dict = {}
    strict = ideal(reject_resume_while_open=True)
    first = make_core(strict, conversations, resumption={})
    user_turn(first, 0.0)
    run_until(first, 1.0)
    second = SessionCore(strict, 1, conversations, lambda: Conversation(2))
    assert second.receive(2.0, setup_msg(resumption={"handle": "conv1-h1"})) == [
        Close(1011, "Internal error encountered.")]
    first.connection_lost(2.5, "1000")
    assert first.log[-1].kind == "client_closed"
    make_core(strict, conversations, conn=2, resumption={"handle": "conv1-h1"})


def test_fault_no_response_ignores_only_the_chosen_turn():
    core = make_core(faults=("no-response:2",))
    for k in range(3):
        user_turn(core, 2.0 * k)
    sent = payloads(run_until(core, 7.0))
    assert [p["serverContent"]["inputTranscription"]["text"] for p in sent
            if "inputTranscription" in p.get("serverContent", {})] == ["[user audio 0.3 s]"] * 2
    assert sum(1 for e in core.log if e.kind == "turn_complete") == 2
    assert any(e.kind == "fault" and "user turn 2" in e.detail for e in core.log)


def test_fault_stall_pauses_reading_then_answers_late():
    core = make_core(faults=("stall:5",))
    out = user_turn(core, 1.0)
    assert out == [PauseReading(until_t=6.3)]
    assert run_until(core, 6.2) == []
    late = run_until(core, 8.0)
    assert late[0][0] == pytest.approx(6.45)
    user_turn(core, 9.0)  # once only
    assert core.stalled_until == 6.3
    start = make_core(faults=("stall:2@start",))
    assert start.receive(1.0, START) == [PauseReading(until_t=3.0)]


def test_fault_close_1011_after_setup_and_mid_turn():
    core = make_core(faults=("close-1011:3",))
    assert run_until(core, 2.99) == []
    assert core.tick(3.0) == [Close(1011, "Internal error encountered.")]
    mid = make_core(faults=("close-1011:mid-turn",))
    user_turn(mid, 0.0)
    sent = run_until(mid, 2.0)
    assert isinstance(sent[-1][1], Close) and sent[-1][1].code == 1011
    assert sum(1 for _, a in sent if "modelTurn" in getattr(a, "payload", {}).get("serverContent", {})) == 4
    assert not any(e.kind == "turn_complete" for e in mid.log)


def test_fault_go_away_slow_and_flood():
    core = make_core(faults=("go-away:2",))
    user_turn(core, 0.0)
    sent = run_until(core, 4.0)
    ga = [(t, a) for t, a in sent if isinstance(a, SendJson) and "goAway" in a.payload]
    assert ga[0][1].payload == {"goAway": {"timeLeft": "2s"}}
    assert sent[-1] == (pytest.approx(ga[0][0] + 2.0), Close(1000, "Session time limit reached."))
    slow = make_core(faults=("slow:1.5",))
    user_turn(slow, 0.0)
    assert run_until(slow, 1.8)[0][0] == pytest.approx(1.8)
    flood = make_core(faults=("flood:20",))
    flood.receive(0.0, START)
    flooded = run_until(flood, 1.0)
    assert len(flooded) == 21  # t = 0, 0.05, ..., 1.0
    flood.receive(1.0, AUDIO)
    flood.receive(1.0, END)
    assert not any("." == p["serverContent"].get("inputTranscription", {}).get("text")
                   for p in payloads(run_until(flood, 3.0)))


@pytest.mark.parametrize("spec, message", [
    ("explode", "unknown fault 'explode'"),
    ("stall:soon", "must be a number"),
    ("no-response:1.5", "user turn number"),
    ("slow:-1", "between 0 and 3600"),
    ("flood:0", "rate > 0"),
    ("go-away:2@start", "only stall"),
])
def test_bad_fault_strings_are_rejected_with_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_fault(spec)
    assert "\n" not in str(info.value)


def test_good_fault_strings():
    assert parse_fault("stall").seconds == 30.0 and parse_fault("stall:4@start").trigger == "start"
    assert parse_fault("no-response").turn is None and parse_fault("no-response:3").turn == 3
    assert parse_fault(" close-1011:mid-turn ").arg == "mid-turn"


def test_model_audio_looks_like_speech_not_a_beep():
    x = speech_like(1.0, seed=1).astype(float)
    frames = x[: x.size // 480 * 480].reshape(-1, 480)  # 20 ms
    rms = np.sqrt((frames**2).mean(axis=1))
    assert rms.max() > 1000 and (rms < 0.2 * rms.max()).mean() > 0.1  # syllables: loud and quiet frames
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1 / MODEL_RATE)
    assert spectrum[(freqs > 200) & (freqs < 1000)].sum() > 0.3 * spectrum[freqs < 200].sum()  # harmonics


# -- over TLS: the real SDK and raw websockets ---------------------------------------------------------------------

TOOLS = [types.Tool(function_declarations=[
    types.FunctionDeclaration(name=n, description=f"tool {n}", parameters=types.Schema(
        type="OBJECT", properties={"q": types.Schema(type="STRING")}, required=["q"]))
    for n in ("get_job", "score_answer", "end_interview", "take_note")])]


def run(coro: Awaitable[Any], timeout_s: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def sdk_client(emu: Emulator, **ws_args: Any) -> genai.Client:
    return genai.Client(api_key="test", http_options=types.HttpOptions(
        base_url=emu.base_url, async_client_args={"ssl": emu.client_ssl_context(), **ws_args}))


def live_config(**kw: Any) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=["AUDIO"],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        tools=TOOLS, **kw)


async def read_turn(session: Any, on_msg: Callable[[Any], Awaitable[None]] | None = None) -> list:
    """Everything up to turn_complete, reading the way a bridge must (receive() stops at each turn_complete)."""
    msgs: list = []
    while True:
        async for msg in session.receive():
            msgs.append(msg)
            if on_msg is not None:
                await on_msg(msg)
            if msg.server_content is not None and msg.server_content.turn_complete:
                return msgs


async def speak(session: Any, n_chunks: int = 3) -> None:
    await session.send_realtime_input(activity_start=types.ActivityStart())
    for _ in range(n_chunks):
        await session.send_realtime_input(audio=types.Blob(data=PCM_100MS, mime_type="audio/pcm;rate=16000"))
    await session.send_realtime_input(activity_end=types.ActivityEnd())


FAST = {"profile": "ideal", "reply_s": 0.3, "latency_s": 0.05}


def test_sdk_greeting_answer_and_tool_call_round_trip():
    async def main() -> tuple[list, list, list, Emulator]:
        async with Emulator(EmulatorConfig(**FAST, tool_call_turns=(2,)), port=0) as emu:
            async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                await session.send_client_content(
                    turns=types.Content(role="user", parts=[types.Part(text="greet the candidate")]),
                    turn_complete=True)
                greeting = await read_turn(session)
                await speak(session)
                answer = await read_turn(session)

                async def respond(msg: Any) -> None:
                    if msg.tool_call is not None:
                        call = msg.tool_call.function_calls[0]
                        await session.send_tool_response(function_responses=[
                            types.FunctionResponse(id=call.id, name=call.name, response={"ok": True})])

                await speak(session)
                tooled = await read_turn(session, respond)
            return greeting, answer, tooled, emu

    greeting, answer, tooled, emu = run(main())
    for turn in (greeting, answer, tooled):
        audio = [m for m in turn if m.data]
        assert audio and all(m.server_content.model_turn.parts[0].inline_data.mime_type == "audio/pcm;rate=24000"
                             for m in audio)
        assert sum(len(m.data) for m in audio) == int(0.3 * 24_000) * 2
        assert "".join(m.server_content.output_transcription.text for m in turn
                       if m.server_content and m.server_content.output_transcription).strip()
        assert turn[-1].server_content.turn_complete
    assert [m.server_content.input_transcription.text for m in answer
            if m.server_content.input_transcription] == ["[user audio 0.3 s]"]
    calls = [m.tool_call.function_calls[0] for m in tooled if m.tool_call]
    assert len(calls) == 1 and calls[0].name == "score_answer" and calls[0].args == {"q": "example"}
    assert emu.violations == [] and emu.turns_answered == 3
    kinds_in = [e.kind for e in emu.log if e.direction == "in" and e.kind != "client_closed"]
    activity = ["activity_start", "audio", "audio", "audio", "activity_end"]
    assert kinds_in == ["api_key", "setup", "client_content", *activity, *activity, "tool_response"]
    assert all(isinstance(e.t_mono, float) and abs(e.t_mono - time.monotonic()) < 30 for e in emu.log)


def test_sdk_violations_are_flagged_and_strict_mode_closes_1007():
    async def main(config: EmulatorConfig) -> tuple[Emulator, BaseException | None]:
        async with Emulator(config, port=0) as emu:
            err = None
            try:
                async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                    blob = types.Blob(data=PCM_100MS, mime_type="audio/pcm;rate=16000")
                    await session.send_realtime_input(audio=blob)  # before any activityStart
                    await session.send_realtime_input(activity_start=types.ActivityStart())
                    await session.send_realtime_input(activity_end=types.ActivityEnd())  # empty
                    await session.send_realtime_input(audio_stream_end=True)
                    await speak(session)
                    await session.send_realtime_input(audio=blob)  # straggler after activityEnd
                    await read_turn(session)
            except errors.APIError as exc:
                err = exc
            return emu, err

    emu, err = run(main(EmulatorConfig(**FAST)))
    assert err is None
    assert [v.rule for v in emu.violations] == [
        "audio_outside_activity", "empty_activity", "audio_stream_end_in_manual_mode", "audio_after_activity_end"]
    emu, err = run(main(EmulatorConfig(**FAST, outside_audio="strict")))
    assert isinstance(err, errors.APIError) and err.code == 1007
    assert [v.rule for v in emu.violations] == ["audio_outside_activity"]


def test_raw_websocket_camel_and_snake_case():
    async def main() -> Emulator:
        async with Emulator(EmulatorConfig(**FAST), port=0) as emu:
            uri = f"wss://127.0.0.1:{emu.port}/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
                  "BidiGenerateContent?key=test"
            for snake in (False, True):
                name = (lambda s: s) if snake else (lambda s: s.split("_")[0] + "".join(
                    w.title() for w in s.split("_")[1:]))
                async with websockets.connect(uri, ssl=emu.client_ssl_context()) as ws:
                    await ws.send(json.dumps({"setup": {"model": "m", name("realtime_input_config"): {
                        name("automatic_activity_detection"): {"disabled": True}}}}))
                    assert json.loads(await ws.recv()) == {"setupComplete": {}}
                    rt = name("realtime_input")
                    await ws.send(json.dumps({rt: {name("activity_start"): {}}}))
                    await ws.send(json.dumps({rt: {"audio": {"data": b64(PCM_100MS, urlsafe=snake),
                                                             name("mime_type"): "audio/pcm;rate=16000"}}}))
                    await ws.send(json.dumps({rt: {name("activity_end"): {}}}))
                    while "turnComplete" not in json.loads(await ws.recv()).get("serverContent", {}):
                        pass
        return emu

    emu = run(main())
    assert emu.violations == [] and emu.turns_answered == 2
    assert {e.conn for e in emu.log} == {0, 1}


def test_sdk_stall_makes_the_client_keepalive_fail_1011():
    async def main() -> tuple[Emulator, BaseException | None, float]:
        async with Emulator(EmulatorConfig(**FAST, faults=[parse_fault("stall:3")]), port=0) as emu:
            client = sdk_client(emu, ping_interval=0.2, ping_timeout=0.4, close_timeout=0.2)
            t0 = time.monotonic()
            try:
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    await speak(session)
                    t0 = time.monotonic()
                    await read_turn(session)
            except (errors.APIError, websockets.ConnectionClosed) as exc:
                return emu, exc, time.monotonic() - t0
            return emu, None, time.monotonic() - t0

    emu, err, after_s = run(main())
    # the SDK reports 1006 (no close frame received); the websockets error it wraps is the field report's
    assert isinstance(err, errors.APIError) and err.code == 1006
    assert "sent 1011 (internal error) keepalive ping timeout" in str(err.__context__)
    assert after_s < 1.5  # the server stopped answering pings, long before the 3 s stall ended
    assert any(e.kind == "fault" and e.detail.startswith("stall") for e in emu.log)
    assert emu.turns_answered == 0


def test_sdk_go_away_then_resume_keeps_the_conversation():
    async def main() -> tuple[Emulator, list]:
        async with Emulator(EmulatorConfig(**FAST, tool_call_turns=(2,), faults=[parse_fault("go-away:0.3")]),
                            port=0) as emu:
            client = sdk_client(emu)
            seen: list = []
            handle = None
            async with client.aio.live.connect(
                    model=MODEL, config=live_config(session_resumption=types.SessionResumptionConfig())) as s:
                await speak(s)
                await read_turn(s)
                while True:  # handle and goAway arrive after turn_complete: a new receive() reads them
                    msg = await anext(aiter(s.receive()))
                    if msg.session_resumption_update is not None:
                        handle = msg.session_resumption_update.new_handle
                    if msg.go_away is not None:
                        seen.append(msg.go_away.time_left)
                        break
            resume = types.SessionResumptionConfig(handle=handle)
            async with client.aio.live.connect(model=MODEL, config=live_config(session_resumption=resume)) as s:

                async def respond(msg: Any) -> None:
                    if msg.tool_call is not None:
                        seen.append(msg.tool_call.function_calls[0].id)
                        await s.send_tool_response(function_responses=[types.FunctionResponse(
                            id=msg.tool_call.function_calls[0].id, name="x", response={})])

                await speak(s)
                await read_turn(s, respond)
            return emu, seen

    emu, seen = run(main())
    assert seen[0] in ("0.3s", 0.3) and seen[1] == "call-1-2"  # user turn 2 of conversation 1
    assert any(e.kind == "resumed" and e.conn == 1 for e in emu.log)
    assert emu.violations == []


def test_sdk_close_1011_mid_turn_reaches_the_client():
    async def main() -> BaseException | None:
        async with Emulator(EmulatorConfig(**FAST, faults=[parse_fault("close-1011:mid-turn")]), port=0) as emu:
            try:
                async with sdk_client(emu).aio.live.connect(model=MODEL, config=live_config()) as session:
                    await speak(session)
                    await read_turn(session)
            except errors.APIError as exc:
                assert emu.turns_answered == 0
                return exc
        return None

    err = run(main())
    assert isinstance(err, errors.APIError) and err.code == 1011


def test_cli_serves_and_stops_on_ctrl_c(tmp_path):
    cert = tmp_path / "emu.pem"
    proc = subprocess.Popen([sys.executable, "-m", "workbench.emulator", "--port", "0", "--cert-out", str(cert),
                             "--reply-s", "0.2", "--fault", "slow:0.1"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "https://127.0.0.1:" in line and cert.exists()
        port = int(line.strip().rsplit(":", 1)[1])

        async def hello() -> dict:
            import ssl

            async with websockets.connect(f"wss://127.0.0.1:{port}/ws", ssl=ssl.create_default_context(
                    cafile=str(cert))) as ws:
                await ws.send(json.dumps(setup_msg()))
                return json.loads(await ws.recv())

        assert set(run(hello())["setupComplete"]) == {"sessionId"}  # the real profile by default
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_cli_rejects_a_bad_fault(capsys):
    from workbench.emulator.__main__ import main

    assert main(["--fault", "stall:later"]) == 2
    assert "stall" in capsys.readouterr().err
