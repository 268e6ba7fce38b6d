"""Barge-in in ``workbench serve``: from an ``interrupted`` message to silence on the agent's outgoing track.

Run:  .venv/bin/python bench/bench_bargein.py [--write] [--rounds N]

The serve side's own pieces on a real aiortc loopback link (as tests/test_serve_bargein.py): a
``ModelAudioTrack`` sent as Opus to a receiving peer, an answer (a tone, queued at once as the server
sends it) playing, then a ``serverContent.interrupted`` message parsed by the SDK's types handed to
``BrowserSession.event`` through ``live.server_events``.  Measured per interruption, from handing the
message over: to the first silent frame the track gives aiortc's sender (what the issue's "< 100 ms to
silence on the outgoing track" is about), and to the first silent frame decoded by the receiving peer
(adds Opus, loopback and the receiver's jitter buffer: aiortc's default prefetch 4, and 1 for a
receiver that holds less, closer to a browser's adaptive buffer on a quiet link).
``--write`` replaces the "## Barge-in" section of bench/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import arg_parser, pct, publish, section  # noqa: E402
from google.genai import types  # noqa: E402

from workbench.core.pcm import MODEL_RATE  # noqa: E402
from workbench.io import eventloop, live  # noqa: E402
from workbench.io.ingest import ingest  # noqa: E402
from workbench.io.media import ModelAudioTrack  # noqa: E402
from workbench.io.webrtc import loopback  # noqa: E402
from workbench.ui.web.server import BrowserSession  # noqa: E402

TITLE = "Barge-in"
TARGET_MS = 100.0
SILENT_RMS = 150.0


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


class TimedVoice(ModelAudioTrack):
    """The track as serve has it, noting when aiortc's sender took each frame and whether it was silent."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[tuple[float, bool]] = []

    async def recv(self):  # noqa: ANN201
        frame = await super().recv()
        self.taken.append((time.monotonic(), not np.frombuffer(frame.planes[0], np.int16).any()))
        return frame


async def measure(rounds: int, prefetch: int | None) -> tuple[list[float], list[float]]:
    """(message -> first silent frame taken by the sender, message -> first silent frame received), ms, per round."""
    from aiortc import RTCPeerConnection

    voice = TimedVoice()
    link = await loopback(voice, jitter_prefetch=prefetch, loop_encode=True)  # as serve sends it
    pc = RTCPeerConnection()
    session = BrowserSession(id="1", name="bench", dir=Path(tempfile.gettempdir()), pc=pc, voice=voice, options={})
    got: list[tuple[float, float]] = []
    task = asyncio.create_task(ingest(link.remote_track, time.monotonic,
                                      lambda r: got.append((r.t, rms(r.samples)))))
    msg = types.LiveServerMessage.model_validate({"serverContent": {"interrupted": True}})
    tone = (np.sin(2 * np.pi * 700 * np.arange(int(1.5 * MODEL_RATE)) / MODEL_RATE) * 10000).astype(np.int16)
    sent_ms: list[float] = []
    recv_ms: list[float] = []
    try:
        await asyncio.sleep(0.5)
        for _ in range(rounds):
            session.model_audio(tone)
            await asyncio.sleep(0.3 + float(np.random.default_rng(len(sent_ms)).uniform(0, 0.02)))  # any phase
            t_msg = time.monotonic()
            for ev in live.server_events(msg, 0.0):
                session.event(ev)
            await asyncio.sleep(0.35)
            sent = next(t for t, silent in voice.taken if t >= t_msg and silent)
            heard = next(t for t, level in got if t >= t_msg and level < SILENT_RMS)
            sent_ms.append((sent - t_msg) * 1000)
            recv_ms.append((heard - t_msg) * 1000)
    finally:
        task.cancel()
        await link.close()
        await pc.close()
    return sent_ms, recv_ms


def report(rounds: int, results: dict[str, tuple[list[float], list[float]]]) -> str:
    lines = [
        f"{rounds} interruptions per row on a real aiortc loopback link: a 1.5 s answer queued at once on serve's "
        "outgoing `ModelAudioTrack`, 0.3 s of it played, then `serverContent.interrupted` (parsed by the SDK's "
        "types) handed to `BrowserSession.event`. *Sender*: message → first silent frame aiortc's sender takes "
        "from the track (the issue's target: < 100 ms to silence on the outgoing track). *Receiver*: message → "
        f"first decoded frame below {SILENT_RMS:g} RMS at the receiving peer (adds Opus, loopback and its jitter "
        "buffer). Milliseconds.",
        "",
        "| receiver jitter buffer | sender median | p95 | max | target < 100 ms | receiver median | p95 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (sent, heard) in results.items():
        met = "met" if max(sent) < TARGET_MS else "MISSED"
        lines.append(f"| {name} | {pct(sent, 50):.0f} | {pct(sent, 95):.0f} | {max(sent):.0f} | {met} | "
                     f"{pct(heard, 50):.0f} | {pct(heard, 95):.0f} | {max(heard):.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=20, help="interruptions per receiver setting")
    args = ap.parse_args()

    async def both() -> dict[str, tuple[list[float], list[float]]]:
        return {"aiortc default (prefetch 4)": await measure(args.rounds, None),
                "prefetch 1": await measure(args.rounds, 1)}

    text = section(TITLE, report(args.rounds, eventloop.run(both())))
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
