"""Ingest: every frame of a track to a consumer, and the clock to it when frames stop coming.

``track.recv()`` blocks forever while no packets arrive (Opus DTX, a muted or stalled browser:
Failure B), so a consumer fed only frames would never see silence.  ``ingest`` gives it both:
``on_frame`` for each frame, and ``on_tick(t)`` at the clock time the consumer says its next
decision is due (``deadline()``, e.g. ``MicPipeline.next_deadline``) when no frame came first.

The loop wakes for frames and for due deadlines, nothing else; with Opus decoded on the loop
(``workbench.io.loopdecode``) frames come straight from the decoder, without a queue hop.  While frames flow every
20 ms, the consumer's deadline (a gap flush 60 ms after the last frame) keeps moving ahead of them, so
the one timer is re-armed only when a deadline comes nearer than the one it is set for, and
otherwise fires, finds nothing due yet and sleeps to the new deadline.  The frame path is a bare
``await track.recv()``: no task, future or timer per frame (a pending-``recv()`` task raced
against a timeout costs about as much as the whole turn detector: bench/BENCHMARKS.md, "Concurrent sessions").

The speech tail.  aiortc's jitter buffer keeps the last ~80 ms of a burst until packets resume
(DESIGN.md section 6), which under DTX is after the turn's ActivityEnd.  When the track's frames
come from a ``LoopDecoder``, ``ingest`` releases what the buffer holds once no packet has come for
``release_s`` (``LoopDecoder.release``): the held frames reach ``on_frame`` then, with their own
media times, before the consumer's gap and end-of-turn deadlines.  The release shares the one
timer (its deadline moves with each frame, and with each packet the buffer kept without a frame
coming out, e.g. while it fills), and fires once per pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from workbench.io.loopdecode import decoder_of
from workbench.io.webrtc import to_mono

# A deadline the consumer did not act on (its tick left it where it was) comes back this much later, not at once:
# a consumer's mistake must not spin the loop.
MIN_TICK_S = 0.001
# No packet for this long: packets have stopped (DTX, mute, stall), so release the jitter buffer's tail.  Frames come
# every 20 ms; 50 ms lets a packet be 30 ms late without a release, and stays below the pipeline's 60 ms gap, so
# the released frames arrive before the gap flush and are not themselves reported as a gap.  A release while
# packets are only late loses nothing (``workbench.io.loopdecode``).
RELEASE_S = 0.05


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from ``track.recv()``: arrival ``t`` on the session clock, media time ``pts_s``, mono int16 48 kHz."""

    t: float
    pts_s: float
    samples: np.ndarray


async def ingest(
    track: MediaStreamTrack,
    clock: Callable[[], float],
    on_frame: Callable[[Received], None],
    on_tick: Callable[[float], None] | None = None,
    deadline: Callable[[], float | None] | None = None,
    direct: bool = True,
    release_s: float | None = RELEASE_S,
) -> int:
    """Hand every frame of ``track`` to ``on_frame`` until the track ends; return how many there were.

    ``deadline()`` is asked after every frame and tick: the ``clock()`` time at which ``on_tick``
    should run if no frame arrives before it, or None for "only frames".  Callbacks run on the
    event loop and must not block; an exception in one ends ``ingest`` with it.  Cancelling the
    task that runs ``ingest`` is safe: aiortc's ``recv()`` is a queue get.

    ``direct``: when a ``LoopDecoder`` feeds the track (``workbench.io.loopdecode``), take each frame
    from it as it is decoded, and await ``recv()`` only for the end of the track.

    ``release_s``: with a ``LoopDecoder`` feeding the track, release the frames its jitter buffer
    holds once no packet has come for this long (None: leave them to aiortc, i.e. until packets resume).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    timer: asyncio.TimerHandle | None = None
    armed_for = float("inf")  # the deadline the timer is set for
    last_tick = float("-inf")
    holder = decoder_of(track) if release_s is not None else None  # whose jitter buffer to release
    hold_due = float("inf")  # when to release it: ``release_s`` after the last frame, once per pause
    releasing = False
    failure: list[BaseException] = []  # raised by a tick; ends ingest through a cancel of its task

    def arm() -> None:
        nonlocal timer, armed_for
        due = deadline() if deadline is not None else None
        if hold_due < float("inf"):
            due = hold_due if due is None else min(due, hold_due)
        if due is None:
            if timer is not None:
                timer.cancel()
                timer, armed_for = None, float("inf")
            return
        due = max(due, last_tick + MIN_TICK_S)
        if timer is not None:
            if armed_for <= due:
                return  # it fires first, finds nothing due, and sleeps on to ``due``
            timer.cancel()
        armed_for = due
        timer = loop.call_later(max(0.0, due - clock()), fire)

    def fail(exc: Exception) -> None:  # from a callback that is not ours to raise in (a timer, the decoder)
        failure.append(exc)
        if task is not None:
            task.cancel()

    def fire() -> None:
        nonlocal timer, armed_for, last_tick, hold_due, releasing
        timer, armed_for = None, float("inf")
        try:
            now = clock()
            if holder is not None and now >= hold_due:
                hold_due = float("inf")
                releasing = True
                try:
                    holder.release()  # the held frames go through ``sink``/the queue like any other
                finally:
                    releasing = False
            due = deadline() if deadline is not None else None
            if due is not None and now >= due and on_tick is not None:
                last_tick = now
                on_tick(now)
            arm()
        except Exception as exc:
            fail(exc)

    n = 0

    def deliver(frame: av.AudioFrame) -> None:
        nonlocal n, hold_due
        n += 1
        tb = frame.time_base  # integer arithmetic: a Fraction product costs 3 µs a frame
        now = clock()
        on_frame(Received(t=now, pts_s=frame.pts * tb.numerator / tb.denominator, samples=to_mono(frame)))
        if holder is not None and not releasing:
            hold_due = now + release_s  # type: ignore[operator]
        arm()

    def sink(frame: av.AudioFrame) -> None:  # runs inside aiortc's RTP handler: never raise into it
        if failure:
            return
        try:
            deliver(frame)
        except Exception as exc:
            fail(exc)

    def held() -> None:  # a packet went into the jitter buffer and no frame came out: packets still come
        nonlocal hold_due
        if failure or releasing:
            return
        try:
            hold_due = clock() + release_s  # type: ignore[operator]
            arm()
        except Exception as exc:
            fail(exc)

    decoder = decoder_of(track) if direct else None
    if holder is not None:
        holder.on_held = held
    try:
        arm()
        if decoder is not None and not decoder.attach(sink):
            decoder = None
        while True:
            try:
                frame = await track.recv()  # with a decoder attached: only the end of the track
            except MediaStreamError:
                return n
            except asyncio.CancelledError:
                if failure and task is not None:
                    task.uncancel()
                    raise failure[0] from None
                raise
            deliver(frame)
    finally:
        if holder is not None:
            holder.on_held = None
        if decoder is not None:
            decoder.detach()
        if timer is not None:
            timer.cancel()
