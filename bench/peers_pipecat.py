"""pipecat's Gemini Live pipeline driven by a paced 48 kHz microphone; runs inside bench/.peers-venv, not the project's.

Run by bench_peers.py:  bench/.peers-venv/bin/python bench/peers_pipecat.py --base-url URL --cert PEM --audio RAW
                        [--n N] [--dtx] [--stop-secs S] [--tail-s S]

Each of N sessions is one pipecat pipeline as its Gemini Live examples build it: a source standing in for
pipecat's input transport (20 ms frames of 48 kHz int16 mono at real-time pace, resampled to 16 kHz with
pipecat's own stream resampler, as ``BaseInputTransport`` does), ``LLMContextAggregatorPair`` with
``SileroVADAnalyzer`` (its VADController, ``audio_idle_timeout`` 1 s) and the default user-turn strategies
(VAD start, smart-turn v3 stop; realtime mode, so no transcript wait), then ``GeminiLiveLLMService`` with
Gemini's VAD disabled (``GeminiVADParams(disabled=True)``): pipecat sends ActivityStart/End from its own turn
signals, audio only inside activities with a pre-roll.  Its genai client is pointed at the emulator through
the service's ``http_options`` (``HttpOptions(base_url=...)``; pipecat hands them to ``genai.Client`` as they
are); the emulator's self-signed certificate is trusted through ``SSL_CERT_FILE``, which the SDK reads.

With ``--dtx`` an all-zero 20 ms frame is not pushed at all (the source sleeps to the next sounding frame), as
frames stop under Opus DTX or a muted track.  Prints one JSON line at the end: per session the monotonic time
frame 0 was due (``t_start``) and of the last frame (``t_end``), this process's CPU samples and the loop lag
samples, so the caller cuts the same windows as for the workbench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

import numpy as np

FRAME = 960  # 20 ms at 48 kHz
RATE_IN = 48_000
RATE = 16_000


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def sample(cpu: list, lag: list, period_s: float = 0.05) -> None:
    """CPU every 50 ms; loop lag every 100 ms as the workbench's bridge samples it (sleep overshoot)."""
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        cpu.append((time.monotonic(), cpu_s()))
        n += 1
        if n % 2 == 0:
            lag.append((loop.time() - due) * 1000.0)


def build(audio: np.ndarray, args: argparse.Namespace, meta: dict):  # noqa: ANN201
    from google.genai.types import HttpOptions
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame, LLMRunFrame, StartFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService, GeminiVADParams

    holder: list = []  # the worker, once built
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME)
    n_tail = int(round(args.tail_s / 0.02))
    sounding = frames.any(axis=1)

    llm = GeminiLiveLLMService(
        api_key="bench",
        http_options=HttpOptions(base_url=args.base_url),
        settings=GeminiLiveLLMService.Settings(vad=GeminiVADParams(disabled=True)),
        inference_on_context_initialization=False,
    )

    class Mic(FrameProcessor):
        """pipecat's input transport, less the network: paced frames, resampled with pipecat's resampler."""

        def __init__(self) -> None:
            super().__init__()
            self._resampler = create_stream_resampler()
            self._task = None

        async def process_frame(self, frame, direction):  # noqa: ANN001, ANN201
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                # As pipecat's examples start a conversation (task.queue_frames([LLMRunFrame()])): the context
                # reaches the service, which (inference_on_context_initialization=False) then takes audio.
                await self.push_frame(LLMRunFrame())
                self._task = self.create_task(self._play())

        async def _play(self) -> None:
            while not llm._ready_for_realtime_input:  # audio before the session is ready is dropped by pipecat
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            meta["t_start"] = t0
            total = frames.shape[0] + n_tail
            for i in range(total):
                silent = i >= frames.shape[0] or not sounding[i]
                if args.dtx and silent:
                    continue
                delay = t0 + i * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                pcm = frames[i].tobytes() if i < frames.shape[0] else bytes(FRAME * 2)
                pcm16 = await self._resampler.resample(pcm, RATE_IN, RATE)
                await self.push_frame(InputAudioRawFrame(audio=pcm16, sample_rate=RATE, num_channels=1))
            delay = t0 + total * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            meta["t_end"] = time.monotonic()
            await asyncio.sleep(args.after_s)  # the last answer
            await holder[0].queue_frame(EndFrame())  # as an app ends a pipecat session

    context = LLMContext()
    vad = SileroVADAnalyzer(params=VADParams(stop_secs=args.stop_secs) if args.stop_secs else None)
    pair = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(vad_analyzer=vad))
    pipeline = Pipeline([Mic(), pair.user(), llm, pair.assistant()])
    _ = FrameDirection
    holder.append(PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=RATE), idle_timeout_secs=None,
                                 enable_rtvi=False))
    return holder[0]


async def main_async(args: argparse.Namespace) -> dict:
    from pipecat.pipeline.runner import PipelineRunner

    audio = np.fromfile(args.audio, dtype=np.int16)
    cpu: list = []
    lag: list = []
    sampler = asyncio.create_task(sample(cpu, lag))
    metas = [{} for _ in range(args.n)]
    workers = [build(audio, args, m) for m in metas]
    runner = PipelineRunner(handle_sigint=False)
    await asyncio.gather(*(runner.run(w) for w in workers))
    sampler.cancel()
    return {"sessions": metas, "cpu": cpu, "lag_ms": lag}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--audio", required=True, help="raw int16 mono 48 kHz")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--dtx", action="store_true")
    ap.add_argument("--stop-secs", type=float, default=None, help="Silero VADParams.stop_secs (default pipecat's)")
    ap.add_argument("--tail-s", type=float, default=1.5)
    ap.add_argument("--after-s", type=float, default=2.0)
    args = ap.parse_args()
    os.environ["SSL_CERT_FILE"] = args.cert
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("PEERS_LOG", "WARNING"))
    out = asyncio.run(main_async(args))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
