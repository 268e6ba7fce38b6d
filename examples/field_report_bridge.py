"""A Gemini Live bridge written the way the field report describes it, recorded with ``workbench.tap``.

Run it against the embedded emulator, then look at what it recorded::

    python examples/field_report_bridge.py --out recordings/field-report
    workbench diagnose recordings/field-report   # names each failure, with the evidence
    workbench vad recordings/field-report        # where the workbench's detector would have ended each turn
    workbench plot recordings/field-report -o field-report.png --replay   # their VAD and the detector, one timeline

The bridge is the user's code, not the workbench's: its own aiortc track, its own amplitude VAD
that counts frames, two tasks calling ``send_realtime_input``, and ``session.receive()`` iterated
once.  Its three mistakes are marked ``MISTAKE``; the lines that record it are marked ``TAP``
(take them out and the bridge runs exactly as before).  The candidate's browser is played by a
loopback WebRTC link with Opus DTX (the sender goes quiet in digital silence, as browsers do).
What happens (``workbench diagnose`` says so):

1. the greeting's ``turn_complete`` ends ``receive()``, and nothing is read again: the answers
   arrive on the socket unread (``receive_loop_idle``);
2. answer 1 ends in room noise, the frame counter ends the turn, and the audio task, paced to real
   time behind a pre-roll backlog, sends audio after ActivityEnd (``audio_after_activity_end``);
3. answer 2 ends in digital silence, ``track.recv()`` stops returning frames, the counter never
   grows and ActivityEnd is never sent (``frames_stopped_in_turn``, ``no_activity_end``: Failure B).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections import deque
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from google.genai import types

from workbench import tap
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import loopback

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
CANDIDATE = Path(__file__).resolve().parent.parent / "recordings" / "candidate.flac"
THRESHOLD_DB = -40.0  # the field report's amplitude VAD
SILENT_FRAMES_TO_END = 35  # 35 silent 20 ms frames = 700 ms of silence ... counted in frames (MISTAKE 1)
PRE_ROLL_FRAMES = 15  # 300 ms of audio from before the onset, sent when speech starts
# The embedded emulator discards audio outside an activity, so one session shows all three failures; with
# "strict" (the emulator's real profile: close 1007; its source, omi #7611) the first ActivityEnd ends it.
OUTSIDE_AUDIO = "discard"


def candidate_audio(noise_db: float = -60.0, seed: int = 0) -> np.ndarray:
    """Two of the bundled candidate's answers (48 kHz int16): the first ends in room noise, the second in
    digital silence (what a browser's noise suppression leaves, and where Opus DTX stops sending)."""
    x, rate = sf.read(CANDIDATE, dtype="int16")
    assert rate == 48_000 and x.ndim == 1
    answer1, answer2 = x[int(0.3 * rate):int(5.6 * rate)], x[int(8.8 * rate):int(14.8 * rate)]
    noise = np.random.default_rng(seed).normal(0, 32768 * 10 ** (noise_db / 20), int(1.6 * rate))
    return np.concatenate([answer1, noise.astype(np.int16), answer2])


def level_db(pcm: np.ndarray) -> float:
    if pcm.size == 0:
        return -120.0
    ms = float(np.mean(pcm.astype(np.float64) ** 2)) / 32768**2
    return 10 * np.log10(ms) if ms > 0 else -120.0


class FrameCountingVad:
    """The field report's VAD: speech above a threshold, and the turn ends after N silent *frames*."""

    def __init__(self) -> None:
        self.in_speech = False
        self.silent_frames = 0

    def feed(self, pcm16k: np.ndarray) -> str | None:
        loud = level_db(pcm16k) >= THRESHOLD_DB
        if not self.in_speech:
            if loud:
                self.in_speech, self.silent_frames = True, 0
                return "start"
            return None
        self.silent_frames = 0 if loud else self.silent_frames + 1
        if self.silent_frames >= SILENT_FRAMES_TO_END:  # MISTAKE 1: no frames, no count, no end
            self.in_speech = False
            return "end"
        return None


async def run(out: str | Path, *, base_url: str | None = None, ssl_context: ssl.SSLContext | None = None,
              api_key: str = "emulator", audio: np.ndarray | None = None, tail_s: float = 2.0) -> Path:
    """One interview through the naive bridge, tapped into ``out``; returns the recording directory."""
    audio = candidate_audio() if audio is None else audio
    # close_timeout: a client that stopped reading waits this long for the server's close frame (websockets: 10 s)
    ws_args = {"close_timeout": 1.0, **({"ssl": ssl_context} if ssl_context else {})}
    http_options = types.HttpOptions(base_url=base_url, async_client_args=ws_args)
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction="You are a friendly job interviewer.",
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        thinking_config=types.ThinkingConfig(thinking_budget=0),
    )
    async with tap.Tap(out, name=Path(out).name, meta={"bridge": "examples/field_report_bridge.py"}) as rec:  # TAP
        client = rec.client(api_key=api_key, http_options=http_options)  # TAP (was: genai.Client(...))
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            session = rec.session(session)  # TAP
            greeted = asyncio.Event()
            audio_q: asyncio.Queue[np.ndarray] = asyncio.Queue()
            signal_q: asyncio.Queue[str] = asyncio.Queue()

            async def receive_loop() -> None:
                async for msg in session.receive():  # MISTAKE 3: receive() ends at the first turn_complete
                    if msg.server_content and msg.server_content.turn_complete:
                        print("[GeminiLive] turn_complete", file=sys.stderr)
                        greeted.set()

            async def audio_loop() -> None:  # MISTAKE 2: audio and activity signals from two tasks
                while True:
                    pcm = await audio_q.get()
                    await session.send_realtime_input(audio=types.Blob(data=pcm.tobytes(),
                                                                       mime_type="audio/pcm;rate=16000"))
                    await asyncio.sleep(pcm.size / 16_000)  # "stream at real time"

            async def signal_loop() -> None:
                while True:
                    if await signal_q.get() == "start":
                        await session.send_realtime_input(activity_start=types.ActivityStart())
                    else:
                        await session.send_realtime_input(activity_end=types.ActivityEnd())

            async def mic_loop(track: tap.TappedTrack) -> None:
                vad = FrameCountingVad()
                resampler = soxr.ResampleStream(48_000, 16_000, 1, dtype="int16")
                pre_roll: deque[np.ndarray] = deque(maxlen=PRE_ROLL_FRAMES)
                while True:
                    try:
                        frame = await track.recv()  # returns nothing at all while the browser sends nothing
                    except Exception:  # aiortc's MediaStreamError: the candidate hung up
                        return
                    stereo = frame.to_ndarray().reshape(-1, frame.layout.nb_channels)
                    pcm = resampler.resample_chunk(stereo.mean(axis=1).astype(np.int16))
                    if not pcm.size:  # soxr's first output comes with the second frame
                        continue
                    decision = vad.feed(pcm)
                    if decision == "start":
                        print("[Bridge] VAD: speech START", file=sys.stderr)
                        rec.vad("speech_start", reason=f"frame above {THRESHOLD_DB:g} dBFS")  # TAP
                        signal_q.put_nowait("start")
                        for old in pre_roll:
                            audio_q.put_nowait(old)
                    if vad.in_speech or decision == "end":
                        audio_q.put_nowait(pcm)
                    if decision == "end":
                        print("[Bridge] VAD: speech END", file=sys.stderr)
                        rec.vad("speech_end", reason=f"{SILENT_FRAMES_TO_END} silent frames counted")  # TAP
                        signal_q.put_nowait("end")
                    pre_roll.append(pcm)

            tasks = [asyncio.create_task(f()) for f in (receive_loop, audio_loop, signal_loop)]
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="Greet the candidate.")]),
                turn_complete=True)
            await asyncio.wait_for(greeted.wait(), 15)
            player = FilePlayerTrack(audio, dtx=True, tail_s=tail_s)  # the candidate's browser
            link = await loopback(player, loop_decode=False)
            hang_up = asyncio.create_task(_hang_up(player, link))
            tasks.append(hang_up)
            try:
                await mic_loop(rec.track(link.remote_track))  # TAP (was: mic_loop(link.remote_track))
                await asyncio.sleep(0.5)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                await link.close()
    return rec.dir


async def _hang_up(player: FilePlayerTrack, link: object) -> None:
    """The browser's side: when the audio (and its silent tail) is over, the candidate leaves the call."""
    await player.done.wait()
    await link.close()  # type: ignore[attr-defined]


async def _main(args: argparse.Namespace) -> Path:
    if args.base_url:
        return await run(args.out, base_url=args.base_url)
    from workbench.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(outside_audio=args.outside_audio), port=0) as emu:
        out = await run(args.out, base_url=emu.base_url, ssl_context=emu.client_ssl_context())
    emu.write_log(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="The field report's bridge, tapped, against the embedded emulator.")
    ap.add_argument("--out", type=Path, default=Path("recordings/field-report"), help="recording directory")
    ap.add_argument("--base-url", help="a Live endpoint instead of the embedded emulator")
    ap.add_argument("--outside-audio", choices=["discard", "strict"], default=OUTSIDE_AUDIO,
                    help="the embedded emulator on audio outside an activity: discard it (default; every failure "
                         "in one session), or close 1007 (strict, as the emulator's real profile does)")
    args = ap.parse_args()
    out = asyncio.run(_main(args))
    print(f"recording: {out}\nnext: workbench diagnose {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
