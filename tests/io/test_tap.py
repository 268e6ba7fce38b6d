"""workbench.io.tap: the recorders dropped into the user's own bridge.

Against the real emulator and the real SDK: a tapped run puts the same messages on the wire as an
untapped run of the same script (the emulator's log is the judge) and raises the same exceptions;
a track of any rate, layout and sample format records as a mono 48 kHz microphone that replays;
a SIGKILLed tapped process leaves a recording that loads; misuse of the tap raises.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import REPO, reaped, sigkill
from google import genai
from google.genai import types

import workbench
from workbench.analysis.replay import replay_recording
from workbench.core.params import TurnParams
from workbench.emulator import Emulator, EmulatorConfig
from workbench.io import tap
from workbench.store.recording import RecordingError

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
# one tone per turn: the emulator flags the same audio reaching the model twice (duplicate_turn)
PCM_100MS = [(np.sin(2 * np.pi * f * np.arange(1600) / 16_000) * 8000).astype("<i2").tobytes() for f in (220, 330)]
CLIENT_KINDS = ("setup", "client_content", "activity_start", "audio", "activity_end", "tool_response")
FAST = {"reply_s": 0.3, "latency_s": 0.05}


def live_config() -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=["AUDIO"],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="score_answer", description="score", parameters=types.Schema(
                type="OBJECT", properties={"q": types.Schema(type="STRING")}, required=["q"]))])])


async def read_turn(session: Any) -> list[str]:
    """Messages up to turn_complete (receive() ends at each one), answering tool calls."""
    kinds: list[str] = []
    while True:
        async for msg in session.receive():
            kinds.append(",".join(sorted(k for k, v in msg.model_dump(exclude_none=True).items() if v)))
            if msg.tool_call is not None:
                call = msg.tool_call.function_calls[0]
                await session.send_tool_response(function_responses=[
                    types.FunctionResponse(id=call.id, name=call.name, response={"ok": True})])
            if msg.server_content is not None and msg.server_content.turn_complete:
                return kinds


async def script(session: Any) -> tuple[list[list[str]], list[str]]:
    """The same user code for both runs: a greeting, two turns (one with a tool call), two bad calls."""
    turns = []
    await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="greet")]),
                                      turn_complete=True)
    turns.append(await read_turn(session))
    errors = []
    for pcm in PCM_100MS:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(audio={"data": pcm, "mime_type": "audio/pcm;rate=16000"})
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        turns.append(await read_turn(session))
    for bad in ({}, {"text": "x", "activity_end": types.ActivityEnd()}):
        try:
            await session.send_realtime_input(**bad)
        except Exception as exc:  # the SDK's own exception, through the tap unchanged
            errors.append(f"{type(exc).__name__}: {exc}")
    return turns, errors


def _wire(emu: Emulator) -> list[tuple[str, int, str | None]]:
    # ``api_key`` is the emulator's note of the request's headers (present/absent), not a message
    return [(e.kind, e.n_bytes, e.detail) for e in emu.log if e.direction == "in" and e.kind != "api_key"]


def test_tapped_and_untapped_runs_put_the_same_messages_on_the_wire(tmp_path: Path) -> None:
    async def run(tapped: bool) -> tuple[Any, Emulator, types.HttpOptions]:
        async with Emulator(EmulatorConfig(**FAST, tool_call_turns=(2,)), port=0) as emu:
            options = types.HttpOptions(base_url=emu.base_url,
                                        async_client_args={"ssl": emu.client_ssl_context(), "max_queue": 8})
            if not tapped:
                client = genai.Client(api_key="test", http_options=options)
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    return await script(session), emu, options
            async with tap.Tap(tmp_path / "rec", name="wire") as rec:
                client = rec.client(api_key="test", http_options=options)
                async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                    return await script(rec.session(session)), emu, options

    (plain_turns, plain_errors), plain_emu, _ = asyncio.run(asyncio.wait_for(run(False), 30))
    (tap_turns, tap_errors), tap_emu, options = asyncio.run(asyncio.wait_for(run(True), 30))
    assert _wire(tap_emu) == _wire(plain_emu)
    assert [k for k, _, _ in _wire(tap_emu)][:3] == ["setup", "client_content", "activity_start"]
    assert tap_turns == plain_turns and len(tap_turns) == 3
    assert tap_errors == plain_errors and len(tap_errors) == 2 and all("ValueError" in e for e in tap_errors)
    assert "create_connection" not in options.async_client_args  # the user's options were copied, not changed

    rec = workbench.load(tmp_path / "rec")
    assert not rec.cut_short and rec.problems == []
    sends = rec.of_kind("send")
    wire = sends[sends["stage"] == "wire"]["msg"].tolist()
    assert wire == [k for k, _, _ in _wire(tap_emu) if k in CLIENT_KINDS]
    assert tap_emu.violations == []
    app = sends[sends["stage"] == "app"]["msg"].tolist()
    # each call as the application made it; the rejected one too (the SDK raised before the wire)
    assert app == ["client_content"] + ["activity_start", "audio", "audio", "activity_end"] * 2 \
        + ["tool_response", "activity_end", "text"]
    assert rec.meta["live"]["max_queue"] == 8 and rec.meta["recorder"] == "tap"
    assert rec.sent.size == 4 * 1600  # the four audio chunks, 16 kHz
    srv = rec.of_kind("server")
    assert (srv[srv["stage"] == "app"]["msg"] == "turn_complete").sum() == 3
    assert rec.model.size == 3 * int(0.3 * 24_000)
    errors = rec.of_kind("error")
    assert errors["where"].tolist() == ["send_realtime_input"] * 2


def _frame(rate: int, layout: str, fmt: str, n: int, pts: int | None, amp: float) -> av.AudioFrame:
    channels = av.AudioLayout(layout).nb_channels
    x = amp * np.sin(2 * np.pi * 300 * (np.arange(n) + (pts or 0)) / rate)
    dtype = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}[fmt.rstrip("p")]
    scale = {np.int16: 32767, np.int32: 2**31 - 1}.get(dtype, 1.0)
    x = (x * scale).astype(dtype)
    arr = np.tile(x, (channels, 1)) if fmt.endswith("p") else np.repeat(x, channels).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
    frame.sample_rate = rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, rate)
    return frame


class SyntheticTrack:
    """Not an aiortc track: any object with ``async recv()``. 3 s of 20 ms frames, a tone from 0.2 to 1.6 s."""

    def __init__(self, rate: int, layout: str, fmt: str, with_pts: bool = True) -> None:
        self.args = (rate, layout, fmt)
        self.with_pts = with_pts
        self.i = 0
        self.returned: list[av.AudioFrame] = []

    async def recv(self) -> av.AudioFrame:
        rate = self.args[0]
        n = rate // 50
        if self.i >= 150:
            raise EOFError("track over")
        amp = 0.3 if 10 <= self.i < 80 else 0.0
        frame = _frame(*self.args, n, self.i * n if self.with_pts else None, amp)
        self.i += 1
        self.returned.append(frame)
        await asyncio.sleep(0)
        return frame


@pytest.mark.parametrize("rate,layout,fmt,with_pts", [
    (16_000, "mono", "s16", True), (44_100, "stereo", "fltp", True), (48_000, "stereo", "s16", True),
    (8_000, "mono", "flt", True), (22_050, "stereo", "s32p", True), (24_000, "mono", "dblp", False),
])
def test_any_track_any_rate_and_layout_records_a_48k_microphone_that_replays(
        tmp_path: Path, rate: int, layout: str, fmt: str, with_pts: bool) -> None:
    src = SyntheticTrack(rate, layout, fmt, with_pts)

    async def run() -> list[Any]:
        got = []
        async with tap.Tap(tmp_path / "rec") as rec:
            track = rec.track(src)
            with pytest.raises(EOFError, match="track over"):  # the source's own exception, unchanged
                while True:
                    got.append(await track.recv())
        return got

    got = asyncio.run(run())
    assert len(got) == 150 and all(a is b for a, b in zip(got, src.returned, strict=True))
    rec = workbench.load(tmp_path / "rec")
    assert rec.problems == [] and rec.meta["track"]["rate"] == rate and rec.meta["track"]["layout"] == layout
    frames = rec.of_kind("frame")
    assert len(frames) == 150 and set(frames["rate"]) == {48_000}
    assert frames["n_samples"].sum() == pytest.approx(3 * 48_000, abs=150)
    assert rec.mic.size == pytest.approx(3 * 48_000, abs=100)
    loud = np.flatnonzero(np.abs(rec.mic) > 0.1)
    assert loud[0] / 48_000 == pytest.approx(0.2, abs=0.005) and loud[-1] / 48_000 == pytest.approx(1.6, abs=0.005)
    turns = replay_recording(rec, TurnParams())
    assert len(turns) == 1
    assert turns[0].speech_start - rec.mic_start_t == pytest.approx(0.2, abs=0.03)
    assert turns[0].speech_end - rec.mic_start_t == pytest.approx(1.6, abs=0.03)


def test_frames_that_stop_are_a_gap_and_the_turn_ends_on_the_clock_in_replay(tmp_path: Path) -> None:
    """Speech, then no frames at all for 1.5 s (DTX): a frame_gap, and the replayed detector ends the turn."""

    class Stalling(SyntheticTrack):
        async def recv(self) -> av.AudioFrame:
            await asyncio.sleep(0.02)  # paced like a microphone: arrival follows media time
            if self.i == 30:
                await asyncio.sleep(1.5)  # the sender went quiet mid-turn; media time jumps with it
                self.i = 30 + 75
            if self.i == 120:
                raise EOFError("track over")
            return await super().recv()

    async def run() -> None:
        async with tap.Tap(tmp_path / "rec") as rec:
            track = rec.track(Stalling(16_000, "mono", "s16"))
            with pytest.raises(EOFError):
                while True:
                    await track.recv()

    asyncio.run(run())
    rec = workbench.load(tmp_path / "rec")
    gaps = rec.of_kind("frame_gap")
    assert len(gaps) == 1 and gaps["gap_s"].iloc[0] == pytest.approx(1.5, abs=0.1) and gaps["resumed"].iloc[0]
    turns = replay_recording(rec, TurnParams())
    assert len(turns) == 1
    assert turns[0].activity_end == pytest.approx(gaps["start_t"].iloc[0] + 0.7, abs=0.1)


def test_misuse_raises_and_the_recording_is_still_finished(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="bridge broke"):
        with tap.Tap(tmp_path / "rec", name="m", meta={"customer": "x"}) as rec:
            rec.track(SyntheticTrack(16_000, "mono", "s16"))
            with pytest.raises(tap.TapError, match="one microphone"):
                rec.track(SyntheticTrack(16_000, "mono", "s16"))
            with pytest.raises(tap.TapError, match="speech_start, speech_end"):
                rec.vad("speech_stop")
            rec.vad("speech_start", reason="theirs")
            raise RuntimeError("bridge broke")
    rec.vad("speech_end")  # a VAD task still running at shutdown: dropped, not an error
    with pytest.raises(tap.TapError, match="tap is closed"):
        rec.session(object())
    rec.close()  # twice is fine
    loaded = workbench.load(tmp_path / "rec")
    assert loaded.meta["ended"] and loaded.meta["customer"] == "x" and loaded.meta["error"] == "RuntimeError"
    assert loaded.of_kind("vad")["decision"].tolist() == ["speech_start"]
    assert "bridge broke" in loaded.of_kind("error")["message"].iloc[0]
    with pytest.raises(RecordingError, match="already holds a recording"):
        tap.Tap(tmp_path / "rec")


# -- note now, record at the tick ----------------------------------------------------------------------------------


class HeldSession:
    """Stands in for the SDK's session: with ``hold_first``, its first send waits for ``release`` (a socket that
    stopped draining); a send of ``text="fail"`` raises."""

    def __init__(self, hold_first: bool = True) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.hold_first = hold_first

    async def send_realtime_input(self, **kwargs: Any) -> None:
        self.calls += 1
        if kwargs.get("text") == "fail":
            raise ConnectionError("socket gone")
        if self.calls == 1 and self.hold_first:
            await self.release.wait()


def _lines(rec_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (rec_dir / "events.jsonl").read_text().splitlines()]


def test_a_send_stuck_in_flight_is_on_disk_at_the_next_tick_and_the_audio_keeps_call_order(tmp_path: Path) -> None:
    """The evidence of a send that never returns (failure A's bridge) must not wait for it; sent.flac must."""
    a, b, c = (np.full(1600, v, "<i2").tobytes() for v in (1, 2, 3))
    pcm = "audio/pcm;rate=16000"

    async def run() -> None:
        with tap.Tap(tmp_path / "rec") as rec:
            held = HeldSession()
            session = rec.session(held)
            stuck = asyncio.create_task(session.send_realtime_input(audio=types.Blob(data=a, mime_type=pcm)))
            await asyncio.sleep(0)
            buf = bytearray(b)
            await session.send_realtime_input(audio={"data": buf, "mime_type": pcm})
            buf[:] = bytes(len(buf))  # the caller refills its buffer: what was sent is what is recorded
            with pytest.raises(ConnectionError, match="socket gone"):
                await session.send_realtime_input(text="fail")
            await session.send_realtime_input(audio=types.Blob(data=c, mime_type=pcm))
            await asyncio.sleep(0.45)  # the tap records every 200 ms
            app = [(e["msg"], e["seq"]) for e in _lines(rec.dir) if e["kind"] == "send" and e["stage"] == "app"]
            assert app == [("audio", 1), ("audio", 2), ("text", 3), ("audio", 4)]
            assert (rec.dir / "sent.s16").stat().st_size == 0  # the audio after the stuck call waits with it
            held.release.set()
            await stuck
            await asyncio.sleep(0.45)
            sent = np.frombuffer((rec.dir / "sent.s16").read_bytes(), "<i2")
            assert sent.tolist() == [1] * 1600 + [2] * 1600 + [3] * 1600  # in call order; the failed call's none

    asyncio.run(asyncio.wait_for(run(), 10))
    loaded = workbench.load(tmp_path / "rec")
    assert "ConnectionError: socket gone" in loaded.of_kind("error")["message"].tolist()[0]
    assert loaded.sent.size == 3 * 1600


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to make a disk full")
def test_a_full_disk_is_an_error_event_never_an_exception_in_the_users_path(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    out.mkdir()
    for name in ("mic.s16", "sent.s16"):  # the audio files land on a full disk: every write fails with ENOSPC
        (out / name).symlink_to("/dev/full")
    src = SyntheticTrack(48_000, "stereo", "s16")
    pcm = "audio/pcm;rate=16000"

    async def run() -> int:
        got = 0
        async with tap.Tap(out) as rec:
            session = rec.session(HeldSession(hold_first=False))
            track = rec.track(src)
            for _ in range(40):
                await track.recv()
                got += 1
                await session.send_realtime_input(audio=types.Blob(data=PCM_100MS[0], mime_type=pcm))
            await asyncio.sleep(0.45)
        return got

    assert asyncio.run(asyncio.wait_for(run(), 10)) == 40  # the user's code ran to its end
    loaded = workbench.load(out)
    errors = loaded.of_kind("error")
    assert set(errors["where"]) == {"tap mic audio", "tap sent audio"}, errors
    assert errors["message"].str.contains("No space left").all()
    assert len(errors) == 2  # once per place, not once per write
    assert len(loaded.of_kind("frame")) == 40 and (loaded.of_kind("send")["msg"] == "audio").sum() == 40


def test_taps_on_one_loop_share_one_tick_and_a_second_loop_gets_its_own(tmp_path: Path) -> None:
    async def both() -> None:
        async with tap.Tap(tmp_path / "a"):
            await asyncio.sleep(0.05)  # apart: timers of their own would fire 50 ms apart
            async with tap.Tap(tmp_path / "b"):
                await asyncio.sleep(0.45)

    asyncio.run(both())
    ticks = {}
    for name in ("a", "b"):
        loaded = workbench.load(tmp_path / name)
        lag = loaded.of_kind("loop_lag")
        ticks[name] = [(round(t + loaded.meta["t0_monotonic"], 3), ms) for t, ms in zip(lag["t"], lag["lag_ms"],
                                                                                        strict=True)]
    assert len(ticks["b"]) >= 3
    assert {ms for _, ms in ticks["b"]} <= {ms for _, ms in ticks["a"]}  # the same tick's lag in both recordings
    assert all(min(abs(t - u) for u, _ in ticks["a"]) < 0.002 for t, _ in ticks["b"])  # at the same time

    rec = tap.Tap(tmp_path / "c")

    async def speak(decision: str) -> None:
        rec.vad(decision)
        await asyncio.sleep(0.25)

    asyncio.run(speak("speech_start"))
    asyncio.run(speak("speech_end"))  # another loop: the tap moves to its tick, and records there too
    rec.close()
    loaded = workbench.load(tmp_path / "c")
    assert loaded.of_kind("vad")["decision"].tolist() == ["speech_start", "speech_end"]
    lag_t = loaded.of_kind("loop_lag")["t"]
    assert (lag_t < 0.25).sum() >= 2 and (lag_t > 0.25).sum() >= 2


# -- the frame path in batches, sans I/O ---------------------------------------------------------------------------


def test_a_frame_row_is_written_as_the_frame_event_it_stands_for(tmp_path: Path) -> None:
    from workbench.core.events import Frame, FrameGap
    from workbench.store.recording import Recorder, _event_line, frame_line

    for row in [(1.234568, 0.02, 960, -23.45), (0.0, 0.0, 1, -120.0), (3600.1, 3599.987654, 441, 0.0)]:
        event = Frame(t=row[0], pts_s=row[1], n_samples=row[2], rate=48_000, level_db=row[3])
        assert frame_line(*row) == _event_line(event)

    seen: list[Any] = []

    class Watcher:
        def event(self, event: Any) -> None:
            seen.append(event)

        def model_audio(self, samples24k: np.ndarray) -> None:
            pass

    gap = FrameGap(t=0.5, start_t=0.1, gap_s=0.4, resumed=True)
    items = [(0.1, 0.0, 960, -20.0), gap, (0.5, 0.4, 960, -21.0)]
    for observer in (None, Watcher()):
        rec = Recorder(tmp_path / f"r{observer is None}", {}, observer=observer)
        rec.emit_items(items)
        rec.close()
        loaded = workbench.load(tmp_path / f"r{observer is None}")
        assert loaded.events["kind"].tolist() == ["frame", "frame_gap", "frame"]
        assert loaded.of_kind("frame")["level_db"].tolist() == [-20.0, -21.0]
    assert [e.kind for e in seen] == ["frame", "frame_gap", "frame"]  # the page sees events, rows made into them


def _stereo(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20_000, 20_000, 2 * n).astype(np.int16)


def test_a_batch_of_frames_gives_each_frame_its_own_row_and_one_block_of_audio() -> None:
    """Batched (the 48 kHz s16 path) and one by one (the any-rate path) agree: levels, media times, samples."""
    from workbench.core.pcm import level_dbfs

    mic = tap.MicTap()
    frames = [_stereo(960, i) for i in range(4)] + [_stereo(480, 9)]  # a short frame at the end: levels one by one
    items, audio = [], []
    for i, x in enumerate(frames):
        pts = sum(f.size // 2 for f in frames[:i]) / 48_000
        it, au = mic.push(10.0 + 0.02 * i, pts, x.tobytes() if i % 2 else x, x.size // 2, 2)
        items += it
        audio += au
    assert items == [] and audio == []  # gathered, nothing handed over yet
    assert mic.batch_age(10.1) == pytest.approx(0.1)
    it, au = mic.flush()
    mono = [(x[0::2] >> 1) + (x[1::2] >> 1) for x in frames]
    assert [r[:3] for r in it] == [(round(10.0 + 0.02 * i, 6), round(sum(m.size for m in mono[:i]) / 48_000, 6), m.size)
                                   for i, m in enumerate(mono)]
    assert [r[3] for r in it] == [round(level_dbfs(m), 2) for m in mono]
    assert len(au) == 1 and au[0][0] == 0.0 and np.array_equal(au[0][1], np.concatenate(mono))
    assert mic.flush() == ([], [])


def test_a_batch_ends_at_a_gap_a_media_jump_or_a_new_layout() -> None:
    mic = tap.MicTap()
    x = _stereo(960, 1)
    assert mic.push(0.0, 0.0, x, 960, 2) == ([], [])
    items, audio = mic.push(0.5, 0.02, x, 960, 2)  # arrived 0.5 s later: the batch before it, then the gap
    assert [type(i).__name__ for i in items] == ["tuple", "FrameGap"] and items[1].gap_s == 0.5
    items, audio = mic.push(0.52, 1.0, x, 960, 2)  # media time jumped: a block of its own
    assert len(items) == 1 and audio[0][0] == 0.02
    items, audio = mic.push(0.54, 1.02, x[:960], 960, 1)  # mono now: a block of its own
    assert len(items) == 1 and audio[0][0] == 1.0
    items, audio = mic.close(2.0)
    assert [type(i).__name__ for i in items] == ["tuple", "FrameGap"] and not items[1].resumed
    assert audio[0][0] == 1.02 and np.array_equal(audio[0][1], x[:960])


def test_a_buffer_longer_than_its_samples_is_read_for_its_own_samples_only() -> None:
    mic = tap.MicTap()
    a, b = _stereo(960, 1), _stereo(960, 2)
    mic.push(0.0, 0.0, np.concatenate([a, np.full(64, 7, np.int16)]), 960, 2)  # padding after the samples
    mic.push(0.02, 0.02, b, 960, 2)
    items, audio = mic.flush()
    assert len(items) == 2
    assert np.array_equal(audio[0][1], np.concatenate([(x[0::2] >> 1) + (x[1::2] >> 1) for x in (a, b)]))


KILLED_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from google.genai import types
    from workbench.io import tap
    from workbench.emulator import Emulator
    from workbench.io.webrtc import mono_frame

    MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"

    class Mic:
        i = 0
        async def recv(self):
            await asyncio.sleep(0.02)
            self.i += 1
            x = (np.sin(np.arange(960) / 7) * 6000).astype(np.int16)
            return mono_frame(x, (self.i - 1) * 960)

    async def main():
        async with Emulator(port=0) as emu:
            with tap.Tap(sys.argv[1]) as rec:
                opts = types.HttpOptions(base_url=emu.base_url, async_client_args={"ssl": emu.client_ssl_context()})
                client = rec.client(api_key="x", http_options=opts)
                manual = types.AutomaticActivityDetection(disabled=True)
                cfg = types.LiveConnectConfig(response_modalities=["AUDIO"], realtime_input_config=
                                              types.RealtimeInputConfig(automatic_activity_detection=manual))
                async with client.aio.live.connect(model=MODEL, config=cfg) as session:
                    session = rec.session(session)
                    track = rec.track(Mic())
                    await session.send_realtime_input(activity_start=types.ActivityStart())
                    rec.vad("speech_start")
                    while True:
                        frame = await track.recv()
                        pcm = frame.to_ndarray()[0, ::3].astype("<i2").tobytes()
                        await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))

    asyncio.run(main())
""")


@pytest.mark.slow
def test_a_sigkilled_tapped_session_loads_up_to_the_last_flush(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    with reaped(subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(out)], cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            events = out / "events.jsonl"
            lines = events.read_text(errors="replace").splitlines()[:-1] if events.exists() else []
            if sum('"kind":"frame"' in ln for ln in lines) >= 100 and any('"stage":"wire"' in ln for ln in lines):
                break
            time.sleep(0.1)
        sigkill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert "ended" not in json.loads((out / "session.json").read_text())
    rec = workbench.load(out)
    assert rec.cut_short
    assert len(rec.of_kind("frame")) >= 100 and len(rec.of_kind("vad")) == 1
    sends = rec.of_kind("send")
    assert {"activity_start", "audio"} <= set(sends[sends["stage"] == "wire"]["msg"])
    # the raw audio is written with each batch's rows, straight to the OS (the rows wait up to 100 ms in a buffer):
    # every frame the events name has its audio, and nothing is lost to an encoder's block
    assert rec.mic.size >= 960 * len(rec.of_kind("frame")) >= 96_000
    assert any(p.startswith("mic.s16: raw audio of a recording cut short") for p in rec.problems), rec.problems
    from workbench.analysis.diagnose import diagnose

    assert "cut_short" in {f.code for f in diagnose(rec)}


# -- the field report's bridge, tapped, against the emulator ----------------------------------------------------


def _example() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("field_report_bridge", REPO / "examples" / "field_report_bridge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def field_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("field-report") / "rec"
    example = _example()

    async def run() -> None:
        # outside_audio="discard": a server that closes 1007 on audio outside an activity (the emulator's real
        # profile) ends this bridge at its first ActivityEnd, before the other two failures can happen
        async with Emulator(EmulatorConfig(outside_audio=example.OUTSIDE_AUDIO), port=0) as emu:
            await example.run(out, base_url=emu.base_url, ssl_context=emu.client_ssl_context())
        emu.write_log(out)

    asyncio.run(asyncio.wait_for(run(), 90))
    return out


@pytest.mark.slow
def test_the_tapped_field_report_bridge_is_diagnosed_failure_by_failure(field_report: Path) -> None:
    from workbench.analysis.diagnose import diagnose

    rec = workbench.load(field_report)
    assert not rec.cut_short and rec.meta["recorder"] == "tap"
    found = {(f.code, f.severity): f for f in diagnose(rec)}
    # the receive loop that stopped: receive() ended at the greeting's turn_complete
    idle = found[("receive_loop_idle", "error")]
    assert "turn_complete" in idle.evidence and "while True" in (idle.cause or "")
    # audio after ActivityEnd: the paced audio task still held the pre-roll backlog when the signal went
    late = found[("audio_after_activity_end", "warning")]
    assert "wire stage" in late.evidence
    # frames stopped in an open turn, so ActivityEnd never went (Failure B)
    stopped = found[("frames_stopped_in_turn", "error")]
    assert "no ActivityEnd" in stopped.title
    assert "counting frames" in (found[("no_activity_end", "error")].cause or "")
    # the emulator saw the same from its side
    log = [json.loads(line) for line in (field_report / "emulator.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in log if e["direction"] == "in"]
    assert kinds.count("activity_start") == 2 and kinds.count("activity_end") == 1
    i_end = kinds.index("activity_end")
    assert "audio" in kinds[i_end + 1:kinds.index("activity_start", i_end)]


@pytest.mark.slow
def test_vad_replay_of_the_tapped_bridge_ends_the_turn_theirs_never_ended(field_report: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.ui.cli import main

    assert main(["vad", str(field_report), "--format", "json"]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    rec = workbench.load(field_report)
    gap = rec.of_kind("frame_gap")
    last_frames_stop = float(gap["start_t"].max())  # the long gap after answer 2 (never resumed)
    assert len(turns) == 2 and all(t["end_reason"] == "silence" for t in turns)
    # The pipeline's media clock is anchored at the first frame's arrival.  When the bridge's first recv() comes
    # after aiortc has queued frames, they arrive in a burst and the anchor is late by the burst (0.3 s in one run
    # of this test on a busy machine), and so is the silence deadline after frames stop; on time, it is 0.
    frames = rec.of_kind("frame")
    anchor_late = float(frames["t"].iloc[0] - frames["pts_s"].iloc[0] - (frames["t"] - frames["pts_s"]).min())
    assert turns[1]["activity_end"] == pytest.approx(last_frames_stop + 0.7 + anchor_late, abs=0.1)
    their_ends = rec.of_kind("vad")
    assert their_ends["decision"].tolist() == ["speech_start", "speech_end", "speech_start"]


@pytest.mark.slow
def test_the_plot_shows_their_vad_and_the_replayed_detector(field_report: Path, tmp_path: Path) -> None:
    from workbench.ui.cli import main
    from workbench.ui.plots import TimelinePlot

    rec = workbench.load(field_report)
    plot = TimelinePlot(rec, replay_turns=replay_recording(rec, TurnParams()), replay_offset_s=0.0)
    ax = plot.axes["turns"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["their VAD (speech)", "their turn (ActivityStart..End)"]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"their VAD: speech_start..speech_end", "workbench detector: turn open (replay)"} <= legend
    assert main(["plot", str(field_report), "-o", str(tmp_path / "t.png")]) == 0  # replays by itself
    assert (tmp_path / "t.png").stat().st_size > 10_000


@pytest.mark.slow
def test_export_otlp_json_reads_back_with_the_opentelemetry_proto_loader(field_report: Path, tmp_path: Path) -> None:
    import base64

    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from workbench.ui.cli import main

    out = tmp_path / "traces.jsonl"
    assert main(["export", str(field_report), "--format", "otlp-json", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])

    def b64_ids(obj: Any) -> Any:  # OTLP JSON ids are hex; protobuf's JSON mapping reads bytes as base64
        if isinstance(obj, dict):
            return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId", "parentSpanId")
                    else b64_ids(v) for k, v in obj.items()}
        return [b64_ids(v) for v in obj] if isinstance(obj, list) else obj

    req = json_format.ParseDict(b64_ids(doc), ExportTraceServiceRequest())
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    by_id = {s.span_id: s for s in spans}
    names = sorted(s.name for s in spans)
    assert names == sorted(["session", "turn 1", "turn 2", "speech", "speech", "activity", "activity", "response"])
    assert len({s.trace_id for s in spans}) == 1 and all(len(s.span_id) == 8 for s in spans)
    root = next(s for s in spans if s.name == "session")
    assert {e.name for e in root.events} >= {"ws connect", "ws close"}
    turn2 = next(s for s in spans if s.name == "turn 2")
    assert by_id[turn2.parent_span_id] is root
    act2 = next(s for s in spans if s.name == "activity" and by_id[s.parent_span_id] is turn2)
    assert act2.status.code == 2 and "never left" in act2.status.message  # STATUS_CODE_ERROR
    wall0 = workbench.load(field_report).meta["start_wall"]
    assert root.start_time_unix_nano == pytest.approx(wall0 * 1e9, abs=1e6)
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano for s in spans)


@pytest.mark.slow
def test_export_audacity_labels_read_back_by_the_label_reader(field_report: Path) -> None:
    from workbench.analysis.sweep import read_labels
    from workbench.ui.cli import main

    assert main(["export", str(field_report), "--format", "audacity"]) == 0
    spans = read_labels(field_report / "mic.labels.txt")
    rec = workbench.load(field_report)
    turns = replay_recording(rec, TurnParams())
    assert spans == [pytest.approx((t.speech_start - rec.mic_start_t, t.speech_end - rec.mic_start_t), abs=1e-5)
                     for t in turns]
    assert len(spans) == 2 and spans[0][0] < 0.5  # answer 1 starts at the top of mic.flac


def test_export_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.ui.cli import main

    assert main(["export", str(tmp_path / "nope"), "--format", "audacity"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error:") and "no such recording" in err[0]
