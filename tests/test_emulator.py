"""The emulator: its sans-I/O core with exact times, and its server against the real google-genai SDK."""

import asyncio
import base64
import json

import numpy as np
import pytest
import websockets
from google.genai import types

from workbench.emulator import Close, Emulator, EmulatorConfig, PauseReading, SendJson, SessionCore, parse_fault
from workbench.emulator.core import Conversation, decode_b64
from workbench.live import LiveSettings, connect_config, interview_tools

PCM = (np.sin(np.arange(3200) * 0.1) * 8000).astype("<i2").tobytes()  # 100 ms at 16 kHz


def core(fault=None, **cfg):
    ids = iter(range(1, 100))
    return SessionCore(EmulatorConfig(**cfg), 0, {}, lambda: Conversation(next(ids)),
                       parse_fault(fault) if fault else None)


def setup_msg(manual=True, camel=False, resume=None):
    rtc = {"automaticActivityDetection" if camel else "automatic_activity_detection": {"disabled": manual}}
    s = {"model": "models/x", "realtimeInputConfig" if camel else "realtime_input_config": rtc,
         "tools": [{"functionDeclarations": [{"name": "next_question"}]}]}
    if resume is not None:
        s["sessionResumption"] = {"handle": resume} if resume else {}
    return {"setup": s}


def audio_msg(camel=False, urlsafe=True):
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    key, mime = ("realtimeInput", "mimeType") if camel else ("realtime_input", "mime_type")
    return {key: {"audio": {"data": enc(PCM).decode(), mime: "audio/pcm;rate=16000"}}}


def signal(name, camel=False):
    return {("realtimeInput" if camel else "realtime_input"): {name: {}}}


def drain(c, until):
    out = []
    t = 0.0
    while t <= until:
        out += c.tick(t)
        t = round(t + 0.01, 2)
    return out


def kinds(actions):
    out = []
    for a in actions:
        if isinstance(a, SendJson):
            p = a.payload
            sc = p.get("serverContent", {})
            out.append(next(iter(sc)) if sc else next(iter(p)))
        else:
            out.append(type(a).__name__)
    return out


@pytest.mark.parametrize("camel", [False, True])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_core_answers_an_activity_in_either_spelling(camel, urlsafe):
    c = core(reply_s=0.4, latency_s=0.1)
    assert kinds(c.receive(0.0, setup_msg(camel=camel))) == ["setupComplete"]
    c.receive(1.0, signal("activityStart" if camel else "activity_start", camel))
    c.receive(1.1, audio_msg(camel, urlsafe))
    c.receive(1.2, signal("activityEnd" if camel else "activity_end", camel))
    assert c.tick(1.25) == []  # nothing before the latency
    out = kinds(drain(c, 3.0))
    assert out[0] == "inputTranscription" and "modelTurn" in out
    assert out[-2:] == ["generationComplete", "turnComplete"]
    assert c.violations == []


def test_core_flags_each_violation():
    c = core()
    c.receive(0, setup_msg())
    c.receive(0.1, audio_msg())  # before any activity
    c.receive(0.2, signal("activity_end"))  # end without start
    c.receive(0.3, signal("activity_start"))
    c.receive(0.4, signal("activity_end"))  # empty
    c.receive(0.5, audio_msg())  # after end
    c.receive(0.6, signal("activity_start"))
    c.receive(0.7, signal("activity_start"))  # while open
    c.receive(0.8, {"realtime_input": {"audio_stream_end": True}})
    rules = [v.rule for v in c.violations]
    assert rules == ["audio_outside_activity", "activity_end_without_start", "empty_activity",
                     "audio_after_activity_end", "activity_start_while_open", "audio_stream_end_in_manual_mode"]


def test_core_strict_mode_closes_1007_and_automatic_vad_flags_signals():
    c = core(outside_audio="strict")
    c.receive(0, setup_msg())
    assert c.receive(0.1, audio_msg()) == [Close(1007, "Request contains an invalid argument.")]
    c2 = core()
    c2.receive(0, setup_msg(manual=False))
    c2.receive(0.1, signal("activity_start"))
    assert [v.rule for v in c2.violations] == ["activity_signal_with_automatic_vad"]


def test_core_message_before_setup_and_garbage():
    c = core()
    assert isinstance(c.receive(0, signal("activity_start"))[0], Close)
    assert c.violations[0].rule == "message_before_setup"
    assert isinstance(core().receive(0, ["not", "an", "object"])[0], Close)


def test_core_faults():
    c = core(fault="no-response")
    c.receive(0, setup_msg())
    for t, m in ((1, signal("activity_start")), (1.1, audio_msg()), (1.2, signal("activity_end"))):
        c.receive(t, m)
    assert drain(c, 5) == []
    c = core(fault="stall:3")
    c.receive(0, setup_msg())
    c.receive(1, signal("activity_start"))
    c.receive(1.1, audio_msg())
    assert c.receive(1.2, signal("activity_end")) == [PauseReading(3.0)]
    c = core(fault="close-1011:2")
    c.receive(0, setup_msg())
    assert Close(1011, "Internal error encountered.") in drain(c, 2.5)


def test_core_resumption_keeps_the_conversation():
    convs: dict = {}
    c = SessionCore(EmulatorConfig(reply_s=0.2), 0, convs, lambda: Conversation(1))
    c.receive(0, setup_msg(resume=""))
    c.receive(0.1, {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": True}})
    out = drain(c, 2)
    upd = [a.payload["sessionResumptionUpdate"] for a in out if "sessionResumptionUpdate" in a.payload]
    assert upd and upd[0]["resumable"]
    c2 = SessionCore(EmulatorConfig(), 1, convs, lambda: Conversation(2))
    c2.receive(3, setup_msg(resume=upd[0]["newHandle"]))
    assert c2.conversation is c.conversation and c2.conversation.answers == 1
    c3 = SessionCore(EmulatorConfig(), 2, convs, lambda: Conversation(3))
    assert c3.receive(3, setup_msg(resume="bogus"))[0] == Close(1008, "Invalid session resumption handle.")


@pytest.mark.parametrize("spec,needle", [("explode", "unknown fault"), ("stall:soon", "number of seconds"),
                                         ("slow:-1", "between 0 and 3600"), ("no-response:1.5", "activity number")])
def test_bad_fault_specs(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse_fault(spec)


def test_decode_b64_accepts_both_alphabets():
    raw = bytes(range(256))
    assert decode_b64(base64.urlsafe_b64encode(raw).decode()) == raw
    assert decode_b64(base64.b64encode(raw).decode().rstrip("=")) == raw


async def sdk_session(emu, fn):
    settings = LiveSettings(base_url=emu.base_url, ssl_context=emu.client_ssl_context())
    from workbench.live import make_client

    client = make_client(settings)
    async with client.aio.live.connect(model=settings.model, config=connect_config(settings)) as session:
        return await fn(session)


async def read_turn(session):
    msgs = []
    async for msg in session.receive():
        msgs.append(msg)
    return msgs


def test_real_sdk_greeting_activity_tool_call():
    async def scenario(session):
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="greet")]),
                                          turn_complete=True)
        greeting = await read_turn(session)
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await session.send_realtime_input(audio=types.Blob(data=PCM, mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        calls = []
        async for msg in session.receive():  # a tool call first (turn 2), then the answer after our response
            if msg.tool_call:
                calls.append(msg.tool_call.function_calls[0])
                await session.send_tool_response(function_responses=[
                    types.FunctionResponse(id=calls[0].id, name=calls[0].name, response={"ok": True})])
            if msg.server_content and msg.server_content.turn_complete:
                break
        return greeting, calls, None

    async def main():
        async with Emulator(EmulatorConfig(reply_s=0.3, tool_call_turns=(2,))) as emu:
            greeting, calls, _ = await sdk_session(emu, scenario)
            return greeting, calls, emu.log, emu.violations

    greeting, calls, log, violations = asyncio.run(main())
    audio = [p.inline_data for m in greeting if m.server_content and m.server_content.model_turn
             for p in m.server_content.model_turn.parts]
    assert audio and audio[0].mime_type == "audio/pcm;rate=24000" and len(audio[0].data) == 24_000 * 2 * 40 // 1000
    assert any(m.server_content and m.server_content.output_transcription for m in greeting)
    assert greeting[-1].server_content.turn_complete
    assert [c.name for c in calls] in ([d.name for d in interview_tools()[0].function_declarations[i:i + 1]]
                                       for i in range(4))
    received = [e.kind for e in log if e.direction == "in"]
    assert received[:2] == ["setup", "client_content"]
    assert received[2:6] == ["activity_start", "audio", "activity_end", "tool_response"]
    assert violations == []


def test_raw_websocket_camel_case_and_sdk_setup_shape():
    async def main():
        async with Emulator(EmulatorConfig(reply_s=0.2)) as emu:
            uri = emu.base_url.replace("https", "wss") + "/ws/anything"
            async with websockets.connect(uri, ssl=emu.client_ssl_context()) as ws:
                await ws.send(json.dumps(setup_msg(camel=True)))
                assert json.loads(await ws.recv()) == {"setupComplete": {}}
                turn = (signal("activityStart", True), audio_msg(camel=True, urlsafe=False),
                        signal("activityEnd", True))
                for m in turn:
                    await ws.send(json.dumps(m))
                seen = []
                while "turnComplete" not in seen:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    seen += list(msg.get("serverContent", {}))
            return seen, emu.violations

    seen, violations = asyncio.run(main())
    assert "modelTurn" in seen and violations == []
