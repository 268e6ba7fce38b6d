"""Record any bridge: the workbench's recorders as a library for the user's own Gemini Live code.

A team that runs its own bridge (its own aiortc track, its own VAD, its own tasks calling
``send_realtime_input``) taps it in a few lines and gets an ordinary workbench recording, so
``diagnose``, ``plot``, ``vad`` replay, the tuning panel and ``sweep`` see its failures::

    from workbench.io import tap

    with tap.Tap("recordings/prod-0142", name="prod-0142", meta={"customer": "x"}) as rec:   # or `async with`
        client = rec.client(api_key=key, http_options=...)   # a google.genai.Client; its websocket is tapped
        async with client.aio.live.connect(model=MODEL, config=CONFIG) as session:
            session = rec.session(session)     # same methods; records each call and each message received
            track = rec.track(remote_track)    # same recv(); records each frame, its audio, and the gaps
            rec.vad("speech_start", reason="level above -40 dBFS")   # optional: the user's own VAD decisions

Contract:

- Wrapping changes nothing the user's code or the server can see: every call goes to the real
  object with the same arguments, returns what it returned and raises what it raised; the same
  messages leave the socket in the same order.  Recording never raises into the user's path: a
  recording failure (disk full) becomes an ``error`` event, once per place.
- What it writes is what ``workbench.store.recording.Recorder`` writes for the workbench's own bridge:
  ``frame`` events (arrival time, media time, 48 kHz sample count, level) and ``mic.flac`` placed
  by media time, ``frame_gap`` when frames stop, ``send`` at the app stage (each call) and the
  wire stage (``workbench.io.wiretap``), ``server`` at both stages, ``ws`` pings, pongs and closes,
  ``vad`` for the user's decisions, ``loop_lag`` every 100 ms, ``sent.flac`` (16 kHz) and
  ``model.flac`` (24 kHz).  ``session.json`` says ``"recorder": "tap"``; ``close()`` marks it ended
  and starts the FLAC compression (``wait_compressed``); until it ends, ``workbench.load`` reads
  the raw files.
- A track is any object with ``async recv()`` returning ``av.AudioFrame``s, of any rate, layout
  and sample format; frames are recorded as mono 48 kHz (resampled by soxr when they are not).
  One track per recording (``mic.flac`` is one microphone).
- Misuse of the tap itself raises ``TapError`` (a second track, a session after ``close()``, an
  unknown VAD decision).  Decisions a VAD task reports after ``close()`` are dropped, since a task
  still running while the user's bridge shuts down must not fail because of the recorder.

Cost: note now, record at the tick.  The tap runs between the user's own calls, so each of its
calls starts from cold caches, and its cost is more the number of times it runs than what it does
each time.  So on the user's path each wrapper only notes what happened, with the time: ``recv()``
the frame, a send its arguments (and, when the call returns, that it did), ``receive()`` the
message.  The event loop's 100 ms tick (one timer per loop, shared by all its taps: ``_Ticker``)
samples the loop's lag, and every other tick (``RECORD_EVERY``) has each tap turn its notes into
events and audio in one pass: frames
read in place and handled in batches (``MicTap.push``: one join, one mono mix, the levels at once,
a compact row per frame, one audio block), the sends' and messages' events, then each audio file's
``write`` and one ``write`` of all the events.  So ``events.jsonl`` holds an event ≤ ~200 ms after
it happened, a frame ≤ ~400 ms after it arrived (a killed process loses at most that much; the
loader orders events by ``t``), and the ``ws``, ``error`` and ``session`` events at once.  The
audio is appended raw (``mic.s16``, ``sent.s16``, ``model.s16``) and compressed to FLAC by a
thread after ``close()`` (``Recorder(raw_audio=True)``; ``wait_compressed()`` waits for it): an
encoder on the loop cost about half of the tap.  Reading what was noted at the tick means reading
it up to 200 ms later: a frame or a message the user's code changes in place in the meantime would
be recorded changed (aiortc's, PyAV's and the SDK's objects are new each time; a send's buffer in
a dict, which pydantic does not copy, is copied when noted).  ``bench/bench_tap.py`` measures the
whole cost against the same bridge untapped and times each entry point (``bench/BENCHMARKS.md``).
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamTrack

from workbench.core.events import Error, Event, FrameGap, LoopLag, Sent, SessionMark, Vad, Ws
from workbench.core.pcm import MIC_RATE, SENT_RATE, level_dbfs
from workbench.core.pipeline import GAP_S
from workbench.core.resample import Resampler
from workbench.io.eventloop import running_loop_name
from workbench.io.live import server_events
from workbench.io.webrtc import mono_int16
from workbench.io.wiretap import tapped_connection
from workbench.store.recording import FLUSH_AT_ONCE, FrameRow, Recorder

__all__ = ["Tap", "TapError", "TappedSession", "TappedTrack"]

Item = FrameRow | Event  # what the mic tap hands the recorder, in time order
Audio = list[tuple[float, np.ndarray]]  # (media t, 48 kHz int16 mono)
NOTHING: tuple[list[Item], Audio] = ([], [])  # what a frame that joins a batch hands over; never appended to

LOOP_LAG_PERIOD_S = 0.1  # the tick: the loop's lag sampled as the workbench's bridge samples it
# ticks from one recording of the notes to the next (200 ms): against every tick, ~10 % less CPU for the tap
# (bench/BENCHMARKS.md, "Recording a user's bridge"), for ≤ 100 ms more of events a killed process loses
RECORD_EVERY = 2
VAD_DECISIONS = ("speech_start", "speech_end")
# the ``send`` event each recorded method makes (``send_realtime_input`` makes one per part it carries)
SEND_NAMES = {"send_client_content": "client_content", "send_tool_response": "tool_response", "send": "send"}
# websockets' own keepalive defaults, recorded when the user's http_options do not set them
WS_DEFAULTS = {"ping_interval": 20.0, "ping_timeout": 20.0, "max_queue": 16, "close_timeout": 10.0}


class TapError(Exception):
    """The tap was used in a way it does not support; the message says how."""


class TapState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class MicTap:
    """Sans-I/O: frames in (arrival time, media time, samples), frame rows, events and 48 kHz mono audio out.

    Mirrors what ``MicPipeline`` records for the workbench's bridge, so ``replay.replay_recording``
    reads a tapped recording the same way: ``Frame.n_samples`` and ``mic.flac`` are in 48 kHz
    samples at the frame's media time, and a pause longer than ``gap_s`` between arrivals is a
    ``FrameGap`` (``resumed=False`` when the recording ends inside it).  Each method returns
    ``(items, audio)``: ``items`` in time order, each a ``FrameRow`` (a ``frame`` event in compact
    form, no dataclass or dict per frame: ``Recorder.emit_items`` writes its line) or another event;
    ``audio`` a list of (media t, 48 kHz int16).

    Two ways in.  ``frame``: int16 mono at any rate, handled at once (resampled to 48 kHz by soxr).
    ``push``: the common case, 48 kHz packed s16 mono or stereo (aiortc's decoders), as the frame's
    own buffer (read in place, never copied alone), gathered into batches of media-contiguous
    frames and handled together (one join, channels averaged and levels computed for the whole
    batch, one audio block: numpy calls and file writes cost per call, not per sample).  A batch ends
    at ``BATCH_FRAMES`` (handed over by the push that filled it), at a gap or a media-time jump, at
    a change of channel count, at ``flush`` (the tap calls it when it records its notes, every
    200 ms, once the batch is ``BATCH_AGE_S`` old: frames that stop are on disk ≤ ~400 ms later,
    so a killed process loses at most that much) and at ``close``.  Each frame keeps its own arrival
    time.  A flowing microphone's batches end at ``BATCH_FRAMES`` (200 ms, what the tap hands over
    each time it records), and a batch's calls cost per batch.
    """

    BATCH_FRAMES = 10
    BATCH_AGE_S = 0.2

    def __init__(self, gap_s: float = GAP_S) -> None:
        self.gap_s = gap_s
        self.last_arrival: float | None = None
        self.media_offset: float | None = None  # session time of media time 0
        self.rate: int | None = None
        self._resampler: Resampler | None = None
        self.n_frames = 0
        # the batch, column by column (no tuple per frame): arrival, media t, buffer, samples per channel
        self._ts: list[float] = []
        self._pts: list[float] = []
        self._bufs: list[Any] = []
        self._ns: list[int] = []
        self._channels = 1
        self._next = 0.0  # media time the next frame of the batch starts at

    def _arrive(self, t: float, pts_s: float, items: list[Item]) -> None:
        if self.media_offset is None:
            self.media_offset = t - pts_s
        if self.last_arrival is not None and t - self.last_arrival > self.gap_s:
            items.append(FrameGap(t=t, start_t=self.last_arrival, gap_s=round(t - self.last_arrival, 4),
                                  resumed=True))
        self.last_arrival = t
        self.n_frames += 1

    def frame(self, t: float, pts_s: float, samples: np.ndarray, rate: int) -> tuple[list[Item], Audio]:
        """One frame of int16 mono ``samples`` at ``rate``; returns (items, [(media t, 48 kHz int16)]).

        Media time plus ``media_offset`` is the session time of a sample (``mic.flac`` is placed by it).
        """
        items, audio = self.flush()
        self._arrive(t, pts_s, items)
        if rate != self.rate:
            audio += self._flush_resampler()
            self.rate = rate
            self._resampler = None if rate == MIC_RATE else Resampler(in_rate=rate, out_rate=MIC_RATE)
        n48 = samples.size if rate == MIC_RATE else round(samples.size * MIC_RATE / rate)
        # rounded as the bridge's pipeline rounds them
        items.append((round(t, 6), round(pts_s, 6), int(n48), round(level_dbfs(samples), 2)))
        if self._resampler is None:
            audio.append((pts_s, samples))
        else:
            audio += self._resampler.push(pts_s, samples)
        return items, audio

    def push(self, t: float, pts_s: float, buf: Any, n: int, channels: int) -> tuple[list[Item], Audio]:
        """One 48 kHz packed s16 frame: ``buf`` (any buffer: a PyAV plane, bytes, an int16 array) holds
        ``n`` samples of ``channels`` (1 or 2) interleaved; returns what a batch it ended produced.

        ``buf`` is kept until the batch is handled (≤ ``BATCH_FRAMES`` frames), not copied."""
        ts = self._ts
        if ts and channels == self._channels and t - ts[-1] <= self.gap_s \
                and abs(pts_s - self._next) <= 0.5 * n / MIC_RATE:  # the common case: the batch goes on
            self.last_arrival = t
            self.n_frames += 1
            ts.append(t)
            self._pts.append(pts_s)
            self._bufs.append(buf)
            self._ns.append(n)
            self._next = pts_s + n / MIC_RATE
            return NOTHING if len(ts) < self.BATCH_FRAMES else self.flush()
        items, audio = self.flush()
        self._arrive(t, pts_s, items)
        if self.rate != MIC_RATE:
            audio += self._flush_resampler()
            self.rate, self._resampler = MIC_RATE, None
        self._ts.append(t)
        self._pts.append(pts_s)
        self._bufs.append(buf)
        self._ns.append(n)
        self._channels = channels
        self._next = pts_s + n / MIC_RATE
        return items, audio

    def batch_age(self, t: float) -> float:
        """How long the oldest frame of the current batch has waited (0 when there is none)."""
        return t - self._ts[0] if self._ts else 0.0

    def flush(self) -> tuple[list[Item], Audio]:
        """Handle the frames gathered by ``push``: their rows and their audio (one contiguous block)."""
        if not self._ts:
            return [], []
        ts, pts, bufs, ns, ch = self._ts, self._pts, self._bufs, self._ns, self._channels
        self._ts, self._pts, self._bufs, self._ns = [], [], [], []
        total = sum(ns)
        raw = np.frombuffer(bufs[0] if len(bufs) == 1 else b"".join(bufs), np.int16)
        if raw.size != total * ch:  # a buffer with padding past its samples: take each frame's own part
            raw = np.concatenate([np.frombuffer(b, np.int16, count=k * ch) for b, k in zip(bufs, ns, strict=True)])
        if ch == 1:
            mono = raw
        else:  # channels averaged as (l >> 1) + (r >> 1): in int16, one shift for both
            half = raw >> 1
            mono = half[0::2] + half[1::2]
        n = ns[0]
        if total == n * len(ns):  # all of one size (a decoder's frames): levels of the whole batch at once
            w = mono.reshape(len(ns), n).astype(np.float32)
            k = 1.0 / (n * 32768.0**2)
            log10 = math.log10
            # ten values: Python floats cost less than more numpy calls; round(x * 100) / 100 is round(x, 2) (the
            # nearest double to the same two decimals but in a halfway case) at a third of its cost
            level_db = [round(1000.0 * log10(v * k)) / 100 if v * k > 1e-12 else -120.0
                        for v in np.einsum("ij,ij->i", w, w).tolist()]
        else:
            at = np.cumsum([0, *ns]).tolist()
            level_db = [round(level_dbfs(mono[a:b]), 2) for a, b in zip(at, at[1:], strict=False)]
        # times to the µs, as the pipeline rounds them (as round(x, 6) does, at a third of its cost)
        items: list[Item] = [(round(t * 1e6) / 1e6, round(p * 1e6) / 1e6, k, db)
                             for t, p, k, db in zip(ts, pts, ns, level_db, strict=True)]
        return items, [(pts[0], mono)]

    def _flush_resampler(self) -> Audio:
        return self._resampler.flush() if self._resampler is not None else []

    def close(self, t: float) -> tuple[list[Item], Audio]:
        """The recording ends at ``t``: the last batch, a gap still open, the audio soxr holds back (by media time)."""
        items, audio = self.flush()
        if self.last_arrival is not None and t - self.last_arrival > self.gap_s:
            items.append(FrameGap(t=t, start_t=self.last_arrival, gap_s=round(t - self.last_arrival, 4),
                                  resumed=False))
        audio += self._flush_resampler()
        self._resampler = None
        return items, audio


def _pcm_rate(mime_type: str | None) -> int:
    """``audio/pcm;rate=16000`` -> 16000 (the Live API's input default when the rate is not given)."""
    for part in (mime_type or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "rate" and value.isdigit():
            return int(value)
    return SENT_RATE


def _blob(value: Any) -> tuple[bytes | None, str | None]:
    """(data, mime_type) of a ``types.Blob`` or its dict form."""
    if isinstance(value, dict):
        return value.get("data"), value.get("mime_type") or value.get("mimeType")
    return getattr(value, "data", None), getattr(value, "mime_type", None)


@dataclass(slots=True)
class _SendNote:
    """A send noted on the user's path: when, which method, its arguments; ``ok`` None while the call is in
    flight, then whether it returned; ``audio`` (data, rate) once its events are recorded, if it carried audio."""

    t: float
    method: str
    kwargs: dict[str, Any] | None
    ok: bool | None = None
    audio: tuple[bytes, int] | None = None


class _Ticker:
    """The 100 ms timer of one event loop, shared by every tap on that loop.

    Each firing samples the loop's lag once (the taps share the loop, so they share its lag) and, every
    ``RECORD_EVERY`` firings, has each tap record what it noted since it last did (``Tap._tick``).  Why one
    timer for all: a process that serves many sessions wakes once a tick, not once a tap, and the tap's
    recording code runs once for each of them in a row, from warm caches, instead of once each between the
    user's calls.  A self-rearming ``call_at`` handle, no task; it stops when its last tap leaves.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.taps: dict[Tap, None] = {}  # an ordered set: taps tick in the order they joined
        self._handle: asyncio.TimerHandle | None = None
        self._fired = 0

    def add(self, tap: Tap) -> None:
        self.taps[tap] = None
        if self._handle is None:
            due = self.loop.time() + LOOP_LAG_PERIOD_S
            self._handle = self.loop.call_at(due, self._fire, due)

    def remove(self, tap: Tap) -> None:
        self.taps.pop(tap, None)
        if not self.taps and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self, due: float) -> None:
        now = self.loop.time()
        lag_ms = round((now - due) * 1000.0, 3)
        self._fired += 1
        record = self._fired % RECORD_EVERY == 0
        try:
            for tap in list(self.taps):
                tap._tick(lag_ms, record)  # never raises (a failure is the tap's ``error`` event)
        finally:
            if self.taps:
                self._handle = self.loop.call_at(now + LOOP_LAG_PERIOD_S, self._fire, now + LOOP_LAG_PERIOD_S)
            else:
                self._handle = None


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = weakref.WeakKeyDictionary()


class Tap:
    """One recording of the user's own bridge session; see the module docstring for the contract.

    ``dir`` must not hold a recording yet.  ``name`` and ``meta`` go into ``session.json`` (``meta``
    may carry ``params``, the user's VAD settings, which ``diagnose`` reads for the silence window).
    Use as ``with`` or ``async with``; leaving the block (or ``close()``) finishes the files.

    Note now, record at the tick: on the user's path each wrapper only notes what happened (the time and a
    reference: the frame, the send's arguments, the message received), and every ``RECORD_EVERY``-th of the
    loop's 100 ms ticks (``_Ticker``) turns the notes into events and audio, all of them in one pass, one
    write of events and a write per audio file.  Events of the kinds ``Recorder`` writes at once (``ws``,
    ``error``, ``session``) are written at once, with everything noted before them.  With no running loop
    there is no tick, and each note is recorded as it comes.
    """

    def __init__(self, dir: str | os.PathLike[str], name: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.t0 = time.monotonic()
        info: dict[str, Any] = {"name": name or os.path.basename(os.fspath(dir).rstrip("/")), "recorder": "tap",
                                "t0_monotonic": self.t0, **(meta or {})}
        self.recorder = Recorder(dir, info, raw_audio=True)
        self.dir = self.recorder.dir
        self.state = TapState.OPEN
        self._seq = 0
        self._sessions = 0
        self._track: TappedTrack | None = None
        self._mic = MicTap()
        # the notes, in the order they were made, waiting for the tick
        self._frames: list[tuple[float, Any]] = []  # (arrival t, frame)
        self._sends: list[_SendNote] = []  # sends whose events are not recorded yet
        self._sent_waiting: deque[_SendNote] = deque()  # sends recorded, whose audio waits for their call (in order)
        self._messages: list[tuple[float, Any]] = []  # (t, LiveServerMessage) as the application got it
        self._items: list[Item] = []  # events and frame rows made, written together at the end of the tick
        self._sent_resamplers: dict[int, soxr.ResampleStream] = {}
        self._rate: int | None = None  # the track's rate and time base, read again only when the rate changes
        self._time_base: tuple[int, int] | None = None  # (numerator, denominator)
        self._counted_s = 0.0
        self._failed: set[str] = set()
        self._ticker: _Ticker | None = None
        self.recorder.emit(SessionMark(t=0.0, what="start", detail=info["name"]))
        self._join_ticker()

    # -- the clock and the recorder ----------------------------------------------------------------

    def clock(self) -> float:
        """Seconds on the session clock (0 = the tap's creation)."""
        return time.monotonic() - self.t0

    def emit(self, event: Event) -> None:
        """Record one event: at the next tick, or at once (with what was noted before it) for the kinds the
        recorder writes at once and when there is no tick.  Never raises: a failure is recorded once as an
        ``error`` event."""
        if self._ticker is not None and event.kind not in FLUSH_AT_ONCE:
            self._items.append(event)
            return
        try:
            self._record_notes()
            self.recorder.emit(event)
        except Exception as exc:
            self._fail("events", exc)

    def _fail(self, where: str, exc: BaseException) -> None:
        if where in self._failed:
            return
        self._failed.add(where)
        try:
            self.recorder.emit(Error(t=self.clock(), where=f"tap {where}", message=f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass

    def _check_open(self, what: str) -> None:
        if self.state is not TapState.OPEN:
            raise TapError(f"tap is {self.state.value}: cannot {what} (the recording in {self.dir} is finished)")

    def _join_ticker(self) -> None:
        """Join the running loop's tick (``_Ticker``); no running loop yet: later, at the next call.  A tap used
        again under another loop (a second ``asyncio.run``) moves to that loop's tick."""
        if self.state is not TapState.OPEN:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._ticker is not None:
            if self._ticker.loop is loop:
                return
            self._ticker.remove(self)
            self._ticker = None
            self._record_now()
        self.recorder.meta["event_loop"] = running_loop_name()
        ticker = _TICKERS.get(loop)
        if ticker is None:
            ticker = _TICKERS[loop] = _Ticker(loop)
        ticker.add(self)
        self._ticker = ticker

    def _tick(self, lag_ms: float, record: bool = True) -> None:
        """From the loop's tick: its lag; with ``record``, everything noted since the last recording recorded."""
        if self.state is not TapState.OPEN:
            return
        self._items.append(LoopLag(t=self.clock(), lag_ms=lag_ms))
        if record:
            self._record_now()

    def _record_now(self) -> None:
        """``_record_notes`` where the user's path or the tick calls it: a failure is an ``error`` event, once."""
        try:
            self._record_notes()
        except Exception as exc:
            self._fail("events", exc)

    def _record_notes(self, closing: bool = False) -> None:
        """Turn the notes into events and audio: audio first, straight to the OS, then the events in one write.

        So a killed process leaves no event without its audio.  Frames go in batches (``MicTap``): a
        batch is written when it is full (200 ms of a flowing microphone) or has waited ``BATCH_AGE_S``.
        Every noted send gets its events (``seq`` in call order), even one still in flight: the evidence
        of a send that never returns must not wait for it.  Its audio, and the audio of the sends after
        it, wait until it returns, so ``sent.flac`` holds only audio whose call returned, in call order;
        ``closing`` gives up on it (its audio is left out).
        """
        if self._frames:
            self._take_frames()
        if self._sends or self._sent_waiting:
            self._record_sends(closing)
        if self._messages:
            self._record_messages()
        if self._mic.batch_age(self.clock()) >= MicTap.BATCH_AGE_S:
            self._mic_out(*self._mic.flush())
        if self._items:
            items, self._items = self._items, []
            self.recorder.emit_items(items, flush=True)

    # -- the contract ------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> Any:
        """A ``google.genai.Client`` built from the same arguments, its websocket tapped.

        ``http_options`` (a ``types.HttpOptions`` or its dict) is copied, never modified; its
        ``async_client_args`` keep every key the user set, and ``create_connection`` becomes a tapped
        subclass of the user's own connection class (websockets' ``ClientConnection`` by default).
        """
        self._check_open("make a client")
        self._join_ticker()
        from google import genai
        from google.genai import types
        from websockets.asyncio.client import ClientConnection

        opts = kwargs.pop("http_options", None)
        if opts is None:
            opts = types.HttpOptions()
        elif isinstance(opts, dict):
            opts = types.HttpOptions.model_validate(opts)
        args = dict(opts.async_client_args or {})
        base = args.get("create_connection") or ClientConnection
        args["create_connection"] = tapped_connection(self.emit, self.clock, base=base)
        opts = opts.model_copy(update={"async_client_args": args})
        ws = {k: args.get(k, v) for k, v in WS_DEFAULTS.items()}
        self.recorder.meta["live"] = {"endpoint": opts.base_url or "google", "ping_interval_s": ws["ping_interval"],
                                      "ping_timeout_s": ws["ping_timeout"], "max_queue": ws["max_queue"],
                                      "close_timeout_s": ws["close_timeout"]}
        self.recorder._write_meta()
        return genai.Client(**kwargs, http_options=opts)

    def session(self, session: Any) -> TappedSession:
        """The Live session, every call and every message received recorded; one ``ws connect`` each."""
        self._check_open("tap a session")
        self._join_ticker()
        self._sessions += 1
        self.emit(Ws(t=self.clock(), what="connect", detail=f"conn {self._sessions}"))
        return TappedSession(session, self, self._sessions)

    def track(self, track: Any) -> TappedTrack:
        """The microphone track, every frame recorded (arrival, media time, audio) and the gaps between them."""
        self._check_open("tap a track")
        if self._track is not None:
            raise TapError("this tap already records a track; one microphone per recording (use another Tap)")
        self._join_ticker()
        self._track = TappedTrack(track, self)
        return self._track

    def vad(self, decision: str, reason: str = "user VAD", *, media_t: float | None = None,
            level_db: float | None = None) -> None:
        """Record one of the user's own VAD decisions (``speech_start`` or ``speech_end``), now.

        ``media_t``: where in the audio the decision places the speech boundary, on the session clock
        (e.g. the last loud frame's arrival for a speech_end); left out, the plot draws the decision only.
        """
        if decision not in VAD_DECISIONS:
            raise TapError(f"VAD decision must be one of {', '.join(VAD_DECISIONS)}, not {decision!r}")
        if self.state is not TapState.OPEN:
            return
        self._join_ticker()
        self.emit(Vad(t=self.clock(), decision=decision, reason=str(reason), media_t=media_t, level_db=level_db))

    def close(self, **summary: Any) -> None:
        """Finish the files and mark ``session.json`` ended (with ``summary`` added); a second call does nothing.

        Everything noted is recorded first; a send still in flight gets its event, not its audio."""
        if self.state is TapState.CLOSED:
            return
        t = self.clock()
        try:
            self._record_notes(closing=True)
            self._mic_out(*self._mic.close(t))
            self._sent_flush()
        finally:
            self.state = TapState.CLOSED
            if self._ticker is not None:
                self._ticker.remove(self)
                self._ticker = None
            items, self._items = self._items, []
            self.recorder.emit_items([*items, SessionMark(t=self.clock(), what="end")])
            self.recorder.close(sessions=self._sessions, frames=self._mic.n_frames,
                                track=self._track.describe() if self._track is not None else None, **summary)

    def wait_compressed(self, timeout: float | None = None) -> bool:
        """After ``close()``: block until ``mic.flac``, ``sent.flac`` and ``model.flac`` are final (the raw
        files gone); False on timeout.  Not needed to load the recording, only to copy FLAC files away."""
        return self.recorder.wait_compressed(timeout)

    def _leave(self, exc: BaseException | None) -> None:
        if exc is not None and self.state is TapState.OPEN:
            self.emit(Error(t=self.clock(), where="session", message=f"{type(exc).__name__}: {exc}"[:300]))
        self.close(error=None if exc is None else type(exc).__name__)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._leave(exc)

    async def __aenter__(self) -> Tap:
        self._join_ticker()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._leave(exc)

    # -- the notes the wrappers make (on the user's path: as little as can be) -----------------------

    def _frame(self, frame: Any) -> None:
        """Note one frame the track returned, with its arrival time; recorded at the tick, in a batch.

        Runs on every frame (50 a second a session) on the user's loop, between their own calls, so
        it does the least it can: the arrival time and a reference to the frame.  Reading the frame
        (PyAV properties, the plane), the gap before it, its event and its audio wait for the tick
        (``_take_frames``).  The frame is read after ``recv()`` returned it, so a track that refills
        one ``AudioFrame`` in place would be recorded with later audio; aiortc's decoders, PyAV's and
        the workbench's tracks make a new frame each time.
        """
        if self.state is not TapState.OPEN:
            return
        frames = self._frames
        frames.append((time.monotonic() - self.t0, frame))
        if self._ticker is None and len(frames) >= MicTap.BATCH_FRAMES:  # no tick to wait for
            self._record_now()

    def _note_send(self, method: str, kwargs: dict[str, Any] | None = None) -> _SendNote:
        """Note a send about to be made; the caller says how the call ended (``_sent_done``).  Never raises."""
        note = _SendNote(self.clock(), method, kwargs)
        if kwargs:
            for key in ("audio", "media"):  # a buffer the caller may refill after the call: copied now
                value = kwargs.get(key)
                if type(value) is dict and not isinstance(value.get("data"), bytes | None):
                    try:
                        note.kwargs = {**note.kwargs, key: {**value, "data": bytes(value["data"])}}
                    except Exception:  # not a buffer: the SDK will say so; recorded as it is
                        pass
        self._sends.append(note)
        return note

    def _sent_done(self, note: _SendNote, ok: bool) -> None:
        note.ok = ok
        if self._ticker is None:
            self._record_now()

    def _received(self, msg: Any) -> None:
        """Note a message the application got from ``receive()``; recorded at the tick."""
        if self.state is not TapState.OPEN:
            return
        self._messages.append((time.monotonic() - self.t0, msg))
        if self._ticker is None:
            self._record_now()

    # -- the notes recorded (at the tick) ------------------------------------------------------------

    def _take_frames(self) -> None:
        """Record the frames noted by ``_frame``: each one's event, its audio by media time, the gap before it.

        Reads each PyAV property once per frame and the plane in place: the time base is a new
        ``Fraction`` at every access and is read (as two ints) only when the rate changes.
        """
        frames, self._frames = self._frames, []
        mic = self._mic
        for t, frame in frames:
            if not isinstance(frame, av.AudioFrame):
                continue
            try:
                rate = frame.sample_rate
                if rate != self._rate:
                    self._rate, tb = rate, frame.time_base
                    self._time_base = None if tb is None else (tb.numerator, tb.denominator)
                    if self._track is not None:
                        self._track.note(frame)
                pts, tb = frame.pts, self._time_base
                n = frame.samples
                pts_s = pts * tb[0] / tb[1] if pts is not None and tb is not None else self._counted_s
                self._counted_s += n / rate  # media time for frames without pts
                channels = frame.layout.nb_channels
                if rate == MIC_RATE and channels <= 2 and frame.format.name == "s16":  # aiortc's decoders: batched
                    out = mic.push(t, pts_s, frame.planes[0], n, channels)
                    if out is not NOTHING:
                        self._mic_out(*out)
                else:
                    self._mic_out(*mic.frame(t, pts_s, mono_int16(frame), rate))
            except Exception as exc:
                self._fail("track", exc)

    def _mic_out(self, items: list[Item], audio: Audio) -> None:
        """A batch's audio to the OS now, its rows to the tick's one write of events (after the audio); audio
        that cannot be written (disk full) is an ``error`` event, and the rows are kept."""
        if audio:
            try:
                self._mic_audio(audio)
            except Exception as exc:
                self._fail("mic audio", exc)
        if items:
            self._items.extend(items)

    def _mic_audio(self, audio: Audio) -> None:
        offset = self._mic.media_offset or 0.0
        for media_t, x in audio:
            self.recorder.mic(media_t + offset, round(media_t * MIC_RATE), x)

    def _record_sends(self, closing: bool) -> None:
        """Each noted send's events (all of them, in call order: ``seq``), then the audio of those whose calls
        returned, up to the first still in flight (so ``sent.flac`` keeps their order)."""
        notes, self._sends = self._sends, []
        for note in notes:
            kwargs, note.kwargs = note.kwargs, None
            try:
                if note.method == "send_realtime_input":
                    note.audio = self._record_realtime(note.t, kwargs or {})
                else:
                    self._sent(note.t, SEND_NAMES.get(note.method, note.method))
            except Exception as exc:
                self._fail("send", exc)
        waiting = self._sent_waiting
        waiting.extend(notes)
        pcm: list[bytes] = []  # 16 kHz audio of consecutive sends, written together
        while waiting and (waiting[0].ok is not None or closing):
            note = waiting.popleft()
            if note.ok and note.audio is not None:
                data, rate = note.audio
                if rate == SENT_RATE and len(data) % 2 == 0:
                    pcm.append(data)
                    continue
                if pcm:
                    self._sent_audio(b"".join(pcm), SENT_RATE)
                    pcm = []
                self._sent_audio(data, rate)
        if pcm:
            self._sent_audio(b"".join(pcm), SENT_RATE)

    def _record_realtime(self, t: float, kwargs: dict[str, Any]) -> tuple[bytes, int] | None:
        """The ``send`` events of one ``send_realtime_input`` call; its audio and rate, when it carried audio."""
        for key in ("activity_start", "activity_end", "audio_stream_end"):
            if kwargs.get(key) not in (None, False):
                self._sent(t, key)
        for key in ("audio", "media"):
            value = kwargs.get(key)
            if value is None:
                continue
            data, mime = _blob(value)
            if key == "media" and not str(mime or "").startswith("audio/"):
                self._sent(t, "video" if str(mime or "").startswith("image/") else "media",
                           len(data) if isinstance(data, bytes | bytearray) else 0)
                continue
            rate = _pcm_rate(mime)
            if isinstance(data, bytes | bytearray):
                self._sent(t, "audio", len(data), round(len(data) // 2 * SENT_RATE / rate))
                return bytes(data), rate
            self._sent(t, "audio", 0)
        if kwargs.get("video") is not None:
            self._sent(t, "video")
        if kwargs.get("text") is not None:
            self._sent(t, "text", len(str(kwargs["text"])))
        return None

    def _sent(self, t: float, msg: str, n_bytes: int = 0, n_samples: int | None = None) -> None:
        self._seq += 1
        self._items.append(Sent(t=t, msg=msg, n_bytes=n_bytes, seq=self._seq, stage="app", n_samples=n_samples))

    def _sent_audio(self, data: bytes, rate: int) -> None:
        """The 16 kHz audio handed to the session, for ``sent.flac`` (resampled when sent at another rate)."""
        try:
            x = np.frombuffer(data, dtype="<i2")
            if rate != SENT_RATE:
                stream = self._sent_resamplers.get(rate)
                if stream is None:
                    stream = self._sent_resamplers[rate] = soxr.ResampleStream(rate, SENT_RATE, 1, dtype="int16")
                x = stream.resample_chunk(x)
            self.recorder.sent(x)
        except Exception as exc:
            self._fail("sent audio", exc)

    def _sent_flush(self) -> None:
        for stream in self._sent_resamplers.values():
            self.recorder.sent(stream.resample_chunk(np.zeros(0, np.int16), last=True))
        self._sent_resamplers.clear()

    def _record_messages(self) -> None:
        """Each noted message's ``server`` events (stage ``app``, at the time the application got it) and audio."""
        messages, self._messages = self._messages, []
        for t, msg in messages:
            try:
                self._items.extend(server_events(msg, t))
                sc = msg.server_content
                if sc is not None and sc.model_turn and sc.model_turn.parts:
                    for part in sc.model_turn.parts:
                        if part.inline_data and part.inline_data.data:
                            self.recorder.model(np.frombuffer(part.inline_data.data, dtype="<i2"))
            except Exception as exc:
                self._fail("receive", exc)


class TappedSession:
    """A Live ``AsyncSession`` whose sends and receives are recorded; everything else is the session's own.

    Each send is noted (``send`` event, stage ``app``, at the time of the call) just before the call, as
    the workbench's writer records it, and the call's own result or exception comes back unchanged; a
    failed call also leaves an ``error`` event, and its audio stays out of ``sent.flac``.  ``receive()``
    yields exactly what the session's ``receive()`` yields (it too ends at each turn_complete), noting
    each message as the application gets it.
    """

    def __init__(self, session: Any, tap: Tap, conn: int) -> None:
        self._session = session
        self._tap = tap
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        tap = self._tap
        note = tap._note_send(method, kwargs) if tap.state is TapState.OPEN else None
        try:
            result = await getattr(self._session, method)(*args, **kwargs)
        except BaseException as exc:
            if note is not None:
                tap._sent_done(note, False)
            if isinstance(exc, Exception) and tap.state is TapState.OPEN:
                tap.emit(Error(t=tap.clock(), where=method, message=f"{type(exc).__name__}: {exc}"[:300]))
            raise
        if note is not None:
            tap._sent_done(note, True)
        return result

    async def send_realtime_input(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("send_realtime_input", *args, **kwargs)

    async def send_client_content(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("send_client_content", *args, **kwargs)

    async def send_tool_response(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("send_tool_response", *args, **kwargs)

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's deprecated ``send``, recorded as ``send`` (the wire tap names what it became)."""
        return await self._call("send", *args, **kwargs)

    async def receive(self) -> AsyncIterator[Any]:
        inner = self._session.receive()
        try:
            while True:
                try:
                    msg = await inner.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    if self._tap.state is TapState.OPEN:
                        self._tap.emit(Error(t=self._tap.clock(), where="receive",
                                             message=f"{type(exc).__name__}: {exc}"[:300]))
                    raise
                self._tap._received(msg)
                yield msg
        finally:
            await inner.aclose()  # closed with ours, as the user's aclose() would close the SDK's


class TappedTrack(MediaStreamTrack):
    """The user's track with the same ``recv()``: each audio frame it returns is recorded, then returned as is.

    ``kind``, ``readyState`` and unknown attributes are the source's; ``stop()`` stops it.  Non-audio
    frames pass through unrecorded; exceptions from the source's ``recv()`` (``MediaStreamError`` at
    its end) come through unchanged.
    """

    def __init__(self, source: Any, tap: Tap) -> None:
        super().__init__()
        self._source = source
        self._tap = tap
        self.kind = getattr(source, "kind", "audio")
        self.first: dict[str, Any] | None = None
        on = getattr(source, "on", None)
        if callable(on) and isinstance(source, MediaStreamTrack):
            source.on("ended", self._source_ended)

    def _source_ended(self) -> None:
        MediaStreamTrack.stop(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_source", "_tap"):
            raise AttributeError(name)
        return getattr(self._source, name)

    @property
    def readyState(self) -> str:
        state = getattr(self._source, "readyState", None)
        return state if isinstance(state, str) else super().readyState

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self._tap._frame(frame)
        return frame

    def stop(self) -> None:
        stop = getattr(self._source, "stop", None)
        if callable(stop):
            stop()
        super().stop()

    def note(self, frame: av.AudioFrame) -> None:
        """Remember the first frame's shape (and the first of each new rate) for session.json."""
        if self.first is None:
            tb = frame.time_base
            self.first = {"rate": int(frame.sample_rate), "channels": frame.layout.nb_channels,
                          "layout": frame.layout.name, "format": frame.format.name, "samples": frame.samples,
                          "time_base": str(tb) if isinstance(tb, Fraction) else None}

    def describe(self) -> dict[str, Any] | None:
        return self.first
