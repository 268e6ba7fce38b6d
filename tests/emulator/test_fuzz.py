"""Malformed input must be refused cleanly: the emulator closes with 1007 and keeps serving; load() reports, keeps data.

Seeded random fuzzing (deterministic), well under a minute.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import workbench
from workbench.core.events import Frame, Vad
from workbench.emulator import Close, Emulator, EmulatorConfig, SessionCore
from workbench.emulator.core import Conversation
from workbench.store.recording import Recorder, RecordingError

SETUP = {"setup": {"model": "models/x", "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
                   "sessionResumption": {}}}
WEIRD: list[Any] = [None, 0, -1, 10**30, 1e308, float("inf"), "", "x" * 10, [], [1, [2]], {}, {"a": 1}, True,
                    "!!!not base64", "AAA", "A" * 7, "é", "\x00"]
KEYS = ["setup", "realtimeInput", "realtime_input", "clientContent", "toolResponse", "tools", "functionDeclarations",
        "sessionResumption", "handle", "audio", "data", "mimeType", "mediaChunks", "activityStart", "activityEnd",
        "audioStreamEnd", "text", "turns", "parts", "turnComplete", "functionResponses", "id", "realtimeInputConfig",
        "automaticActivityDetection", "disabled", "model", "parameters", "properties", "required", "name"]


def _core() -> SessionCore:
    ids = itertools.count(1)
    return SessionCore(EmulatorConfig(profile="ideal"), 0, {}, lambda: Conversation(id=next(ids)))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice(WEIRD)
    if r < 0.8:
        return {rng.choice(KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(1, 3))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def _random_session(rng: random.Random) -> list[Any]:
    msgs = [SETUP] if rng.random() < 0.7 else []
    msgs += [_random_value(rng) for _ in range(rng.randint(1, 4))]
    return msgs


def _feed(msgs: list[Any]) -> list[Any]:
    core, actions, t = _core(), [], 0.0
    for m in msgs:
        t += 0.1
        actions += core.receive(t, m) + core.tick(t + 5.0)
    return actions


# -- the sans-I/O core ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [None, [], [SETUP], "text", 3, {}, {"nonsense": 1}])
def test_core_refuses_non_objects_and_unknown_first_messages_with_1007(msg: Any) -> None:
    closes = [a for a in _feed([msg]) if isinstance(a, Close)]
    assert [c.code for c in closes] == [1007]


def _audio_msgs(data: Any) -> list[Any]:
    return [SETUP, {"realtimeInput": {"activityStart": {}}},
            {"realtimeInput": {"audio": {"data": data, "mimeType": "audio/pcm;rate=16000"}}}]


@pytest.mark.parametrize("data", ["!!!", "A", "AAAAA", "\u00e9\u00e9\u00e9\u00e9"])
def test_core_bad_base64_closes_1007(data: str) -> None:
    assert [a.code for a in _feed(_audio_msgs(data)) if isinstance(a, Close)] == [1007]


@pytest.mark.parametrize("data", [12, None, ["AA"], {"b": 1}])
def test_core_non_string_audio_data_does_not_raise(data: Any) -> None:
    # Taken today as 0 bytes of audio; Google answers 1007.  Either is clean, a crash is not.
    assert [a.code for a in _feed(_audio_msgs(data)) if isinstance(a, Close)] in ([], [1007])


def test_core_huge_audio_is_counted_not_fatal() -> None:
    pcm = np.zeros(16_000 * 60, np.int16).tobytes()  # a minute in one message
    import base64

    msgs = [SETUP, {"realtimeInput": {"activityStart": {}}},
            {"realtimeInput": {"audio": {"data": base64.b64encode(pcm).decode(), "mimeType": "audio/pcm"}}},
            {"realtimeInput": {"activityEnd": {}}}]
    assert not [a for a in _feed(msgs) if isinstance(a, Close)]


# Found by this fuzzer (they used to raise inside the core and end the connection with 1011).
CORE_CRASHES = [
    [SETUP, {"realtimeInput": {"mediaChunks": {"a": 1}}}],  # chunks[0] on a dict: KeyError
    [SETUP, {"realtimeInput": {"mediaChunks": 5}}],  # chunks[0] on an int: TypeError
    [SETUP, {"clientContent": {"turns": [{"parts": 5}]}}],  # iterating parts: TypeError
    [SETUP, {"toolResponse": {"functionResponses": 5}}],  # iterating responses: TypeError
    [{"setup": {"tools": 5}}],  # iterating tools: TypeError
]


@pytest.mark.parametrize("msgs", CORE_CRASHES)
def test_core_wrong_types_close_1007(msgs: list[Any]) -> None:
    assert [a.code for a in _feed(msgs) if isinstance(a, Close)] == [1007]


def test_core_random_messages_never_raise() -> None:
    rng = random.Random(20261125)
    for _ in range(3000):
        for a in _feed(_random_session(rng)):
            if isinstance(a, Close):
                assert a.code in (1000, 1007, 1008, 1011)


# -- the server over a real websocket ---------------------------------------------------------------------------------


async def _exchange(emu: Emulator, frames: list[str | bytes]) -> tuple[int | None, list[str]]:
    """Send ``frames`` on a fresh connection; the close code and what came back."""
    got: list[str] = []
    async with connect(emu.base_url.replace("https", "wss") + "/ws", ssl=emu.client_ssl_context(),
                       max_size=None, open_timeout=5) as ws:
        try:
            for f in frames:
                await ws.send(f)
            while True:
                got.append(str(await asyncio.wait_for(ws.recv(), 2.0)))
        except ConnectionClosed:
            pass
        except TimeoutError:
            return None, got
        return ws.close_code, got


MALFORMED_WIRE: list[tuple[str, list[str | bytes]]] = [
    ("not json", ["{not json"]),
    ("binary garbage", [bytes(range(256))]),
    ("json array", ["[1, 2, 3]"]),
    ("json string", ['"setup"']),
    ("huge number", ['{"setup": 1e999999}']),
    ("message before setup", [json.dumps({"realtimeInput": {"activityStart": {}}})]),
    ("bad base64", [json.dumps(SETUP), json.dumps({"realtimeInput": {"audio": {"data": "!!!"}}})]),
    ("deep nesting", ["[" * 50_000 + "]" * 50_000]),
]


@pytest.mark.parametrize("name,frames", MALFORMED_WIRE, ids=[n for n, _ in MALFORMED_WIRE])
def test_server_closes_1007_and_keeps_serving(name: str, frames: list[str | bytes]) -> None:
    async def go() -> None:
        async with Emulator(EmulatorConfig(profile="ideal")) as emu:
            code, _ = await _exchange(emu, frames)
            if name == "huge number" and code is None:
                return  # 1e999999 parses as inf; a setup without fields is accepted, cleanly (no 1011)
            assert code == 1007, f"{name}: closed with {code}"
            code, got = await _exchange(emu, [json.dumps(SETUP)])  # another connection still works
            assert got and "setupComplete" in got[0]

    asyncio.run(asyncio.wait_for(go(), 30))


def test_server_survives_a_crashing_connection() -> None:
    async def go() -> None:
        async with Emulator(EmulatorConfig(profile="ideal")) as emu:
            code, _ = await _exchange(emu, [json.dumps(m) for m in CORE_CRASHES[0]])
            assert code in (1007, 1011)
            _, got = await _exchange(emu, [json.dumps(SETUP)])
            assert got and "setupComplete" in got[0]

    asyncio.run(asyncio.wait_for(go(), 30))


# -- load() -----------------------------------------------------------------------------------------------------------


def _recording(tmp_path, n: int = 50):
    rec = Recorder(tmp_path / "r", {"name": "fuzz"})
    for i in range(n):
        rec.emit(Frame(t=i * 0.02, pts_s=i * 0.02, n_samples=960, rate=48_000, level_db=-30.0))
        rec.mic(i * 0.02, i * 960, np.full(960, 1000, np.int16))
    rec.sent(np.full(16_000, 500, np.int16))  # so that an empty sent.flac is damage, not an empty stream
    rec.emit(Vad(t=1.0, decision="speech_start", reason="fuzz", media_t=0.9))
    rec.close()
    return tmp_path / "r"


def test_load_survives_garbled_events(tmp_path) -> None:
    path = _recording(tmp_path)
    good = (path / "events.jsonl").read_text().splitlines()
    rng = random.Random(7)
    for trial in range(40):
        lines = list(good)
        bad = 0
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(lines))
            junk = rng.choice([
                lines[i][: rng.randrange(len(lines[i]))],  # truncated
                "\x00\xff garbage",
                "[1, 2, 3]",
                '{"kind": "frame"}',  # no t
                '{"t": "soon", "kind": "vad"}',
                '{"t": [1], "kind": "vad"}',
                '{"t": 1.0, "kind": 5, "what": {"deep": [1, 2]}}',
                "{" * 5000,
            ])
            lines[i] = junk
            bad += 1
        (path / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
        rec = workbench.load(path)
        readable = sum(1 for ln in lines if _is_event(ln))
        assert len(rec.events) == readable, trial
        assert all("\n" not in p for p in rec.problems)
        assert rec.mic.size == 50 * 960


def _is_event(line: str) -> bool:
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(d, dict) and isinstance(d.get("t"), (int, float)) and not isinstance(d.get("t"), bool)


@pytest.mark.parametrize("content", [b"", b"not audio at all", b"fLaC" + bytes(100), bytes(range(256)) * 50])
def test_load_non_audio_flac_is_a_problem_not_a_crash(tmp_path, content: bytes) -> None:
    path = _recording(tmp_path)
    (path / "sent.flac").write_bytes(content)
    rec = workbench.load(path)
    assert rec.sent.size == 0
    assert rec.mic.size == 50 * 960 and len(rec.events) == 51
    [p] = [p for p in rec.problems if p.startswith("sent.flac")]
    assert "\n" not in p


def test_load_wav_renamed_flac_still_reads(tmp_path) -> None:
    path = _recording(tmp_path)
    sf.write(path / "model.flac", np.zeros((2400, 2), np.int16), 24_000, format="WAV")
    assert workbench.load(path).model.size == 2400


@pytest.mark.parametrize("meta", [b"", b"[]", b"{", b"\xff\xfe", b"null", b'"x"'])
def test_load_bad_session_json_is_one_line_error(tmp_path, meta: bytes) -> None:
    path = _recording(tmp_path)
    (path / "session.json").write_bytes(meta)
    with pytest.raises(RecordingError) as err:
        workbench.load(path)
    assert "\n" not in str(err.value)
