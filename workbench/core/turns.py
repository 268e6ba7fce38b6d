"""Sans-I/O turn detector: frames and clock ticks in, ActivityStart/End decisions out.

Why a clock: when a speaker goes quiet, WebRTC may stop delivering frames
altogether (DTX, muted track; aiortc never makes silent frames), so a detector
that counts silent frames never ends the turn (failure B).  Here silence is
``clock - last_speech_end`` and ``tick(t)`` alone can end a turn.

Time model.  ``frame(t, samples)`` takes the *media* time of the frame's first
sample, mapped onto the session clock; ``tick(t)`` takes the clock.  Audio is
scored in fixed windows (10 ms energy, 10/20/30 ms webrtcvad, 32 ms silero)
whatever the frame sizes; a frame whose ``t`` does not continue the previous
frame (pts jump) restarts the windowing and drops the sub-window remainder.
``feed(t, block, FileClock)`` takes a file in long stretches: the clock is the
file's own (frames of ``frame_n`` samples arriving when complete, ticks every
``tick_s``), and the decisions are exactly those of ``tick`` and ``frame`` called
on that schedule, without a call per frame.

One state machine for both: the scorer scores every new window once, in order
(re-sent audio is not scored again; audio before the last ActivityEnd is scored,
so a stateful scorer follows the audio, but cannot start or extend a turn); the
walk over the scored windows judges one window at a time (``_judge``, the rules
below) only where something can happen, and applies the runs in between in one
step.  States: ``TurnState`` (idle, candidate onset, open turn, finished), with
every transition in ``_TRANSITIONS``; a call after ``finish`` raises
``InvalidState``.

Rules:

- A turn starts when windows that may *start* speech are followed, without a
  window below the *stay* level, for ``min_speech_ms``; ``speech_t`` is the
  first window's media time.  Its ``pre_roll`` holds the audio from
  ``pre_roll_ms`` before ``speech_t`` to the end of the triggering frame, never
  earlier than the previous ActivityEnd (that audio was already sent).
- An open turn ends when ``now - last_speech_end >= silence_ms`` (gaps count as
  silence) or ``now - activity_start >= max_turn_ms``.  ``now`` is the tick, or,
  inside a frame, the media time at which the condition became true.
- ``endpointing="dynamic"``: the window is not ``silence_ms`` but the speaker's own
  pause length (``endpointing.DynamicWindow``: EMA of the pauses seen inside turns
  and of the pauses after which the speaker resumed within ``max_silence_ms`` of a
  turn we ended), clamped to ``[silence_ms, max_silence_ms]``.
- ``end_model="smart-turn"``: after ``silence_ms`` of silence the model scores the
  turn's last 8 s (silence so far included; a gap in the frames, DTX, is zeros up
  to ``now``), once per silence.  p >= ``end_threshold`` ends the turn (reason
  ``end_model``); below, the turn waits until the silence reaches
  ``max_silence_ms`` (reason ``max_silence``).  Both together: "complete" ends
  the turn only once the silence also reaches the speaker's own window (the
  model's complete is wrong at 40-50 % of hesitations; this speaker's pauses
  guard them), "incomplete" waits to ``max_silence_ms``.  Every score is an
  ``end_score`` decision.  No
  re-scoring as the silence grows: measured on real speech, the model's score
  rises at hesitations too (issue 15), so it does not separate them.
  The clock, not frames, reaches these deadlines: ``tick`` alone scores and ends.
  A model with ``submit(audio, turn) -> pending`` (``io.endmodel.EndModelWorker``'s
  session handle, what the live pipeline uses) is scored off the loop: the detector
  polls ``pending.done()`` every ``POLL_S`` on its clock and decides at the first
  tick that finds it done; speech that resumes meanwhile, or the turn ending (the
  cap), makes that score stale: dropped, and ``pending.cancel(reason)`` tells the
  worker (when it has ``cancel``) so a queued request never costs CPU.
- Decision times never go back: a decision's ``t`` is at least the latest tick.
- Late frames: audio whose media time is before the last ActivityEnd decision
  (a re-sent/overlapping frame, or the ~80 ms aiortc's jitter buffer holds until
  packets resume when nothing releases it) is ignored: it cannot reopen that
  turn, start a new one, or enter a pre-roll.  The bridge's ingest releases that
  held tail ~50 ms after packets stop (``workbench.io.ingest``, ``LoopDecoder.release``),
  so it arrives well inside the silence window and ends its turn by media time:
  a turn's last syllable is sent before its ActivityEnd.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import numpy as np

from workbench.core.endpointing import MIN_PAUSE_S, DynamicWindow
from workbench.core.endturn import RATE as MODEL_RATE
from workbench.core.endturn import WINDOW_S as MODEL_WINDOW_S
from workbench.core.params import ENDPOINTING_NAMES, TurnParams
from workbench.core.pcm import SENT_RATE
from workbench.core.scorers import SileroInfer, make_scorer

__all__ = ["ENDPOINTING_NAMES", "POLL_S", "Decision", "DecisionKind", "FileClock", "InvalidState", "TurnDetector",
           "TurnParams", "TurnState"]

_EPS = 1e-6  # seconds; absorbs float error in window times (a sample is 62.5 us)
_INT16_SCALE = np.float32(1 / 32768)
_CONTIGUOUS_S = 0.001  # a frame starting within 1 ms of the previous end continues the stream
POLL_S = 0.005  # how often the clock looks at a model score running on a thread
_JUDGE_EACH = 8  # batches of up to this many windows are judged one by one (no run-finding overhead)


class DecisionKind(StrEnum):
    """What a decision is; the values are what ``events.jsonl`` records in ``vad.decision``."""

    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    END_SCORE = "end_score"


class TurnState(Enum):
    """Where the detector is: no speech, an onset being measured against ``min_speech_ms``, a turn, or done."""

    IDLE = "idle"
    CANDIDATE = "candidate"
    OPEN = "open"
    FINISHED = "finished"


# Every transition the detector makes, in one place (``TurnDetector._to``); anything else is a bug and raises.
_TRANSITIONS: dict[TurnState, frozenset[TurnState]] = {
    TurnState.IDLE: frozenset({TurnState.CANDIDATE, TurnState.FINISHED}),
    TurnState.CANDIDATE: frozenset({TurnState.IDLE, TurnState.OPEN, TurnState.FINISHED}),
    TurnState.OPEN: frozenset({TurnState.IDLE, TurnState.FINISHED}),
    TurnState.FINISHED: frozenset(),
}


# Plain names for the hot path (a live frame is judged ~50 times a second per session).
_IDLE, _CANDIDATE, _OPEN, _FINISHED = TurnState.IDLE, TurnState.CANDIDATE, TurnState.OPEN, TurnState.FINISHED


class InvalidState(RuntimeError):
    """A caller used the detector in a state that does not allow it (e.g. a frame after ``finish``)."""


@dataclass(frozen=True)
class FileClock:
    """The clock of a file replayed as if live, for ``TurnDetector.feed``.

    Frames of ``frame_n`` samples, counted from media time 0, arrive when their last sample is in (the clock is the
    media time then), and the clock ticks every ``tick_s`` (at ``k * tick_s``) between arrivals: what
    ``analysis.replay`` does with 20 ms frames and 10 ms ticks.  ``feed`` decides exactly what calling ``tick``
    and ``frame`` on that schedule would, without a call per frame.
    """

    frame_n: int = 320
    tick_s: float = 0.01


@dataclass(frozen=True)
class Decision:
    """A turn boundary: ``t`` is the clock time it was taken, ``speech_t`` the media time it refers to."""

    kind: DecisionKind
    t: float
    speech_t: float
    # start: why; end: "silence" | "end_model" | "max_silence" | "max_turn" | "end_of_audio";
    # end_score: "complete" | "incomplete"
    reason: str
    level_db: float | None = None
    pre_roll: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    probability: float | None = None  # end_score: the end model's P(turn complete)
    silence_ms: float | None = None  # end_score: the silence so far when it was scored


class TurnDetector:
    """Hysteresis + minimum speech + clock-measured silence + pre-roll + maximum turn length.

    One state machine for live frames (``frame``/``tick``) and whole files (``feed`` with a ``FileClock``): the
    scorer scores a batch of windows at once, and the walk over them judges one window at a time only where
    something can happen (an onset, a deadline, a pause the dynamic window learns from); runs in between (silence
    while idle, speech or silence while a turn is open and no deadline is near) are applied in one step, with the
    same effect the window-by-window rules would have (``_judge`` holds those rules).
    """

    def __init__(self, params: TurnParams, rate: int = SENT_RATE, end_model: Any = None, *,
                 silero_infer: SileroInfer | None = None) -> None:
        """``end_model``: the model ``params.end_model`` names, an object with ``probability(audio16k) -> float``
        (scored inline) or ``submit(audio16k, turn) -> pending`` (scored off the loop).  The detector never
        builds it: whoever runs the detector owns the model's life (``store.models.make_end_model``,
        ``io.endmodel.EndModelWorker``), so one model serves many sessions.  Required when
        ``params.end_model`` is not ``none``.  ``silero_infer``: the loaded Silero model
        (``workbench.store.models.silero_infer()``; default: the registered loader)."""
        params.validate()
        self.params = params
        self.rate = rate
        self._scorer = make_scorer(params, rate, silero_infer=silero_infer)
        self._win = self._scorer.window
        self._win_s = self._win / rate
        self._min_speech_s = params.min_speech_ms / 1000
        self._silence_s = params.silence_ms / 1000
        self._pre_roll_s = params.pre_roll_ms / 1000
        self._max_turn_s = params.max_turn_ms / 1000
        self._max_silence_s = max(params.max_silence_ms, params.silence_ms) / 1000
        self._dyn = (DynamicWindow(self._silence_s, self._max_silence_s, params.dynamic_alpha, params.dynamic_margin)
                     if params.endpointing == "dynamic" else None)
        if end_model is None and params.end_model != "none":
            raise ValueError(f"end_model={params.end_model!r} needs a model object (store.models.make_end_model or "
                             "io.endmodel.EndModelWorker().session(name))")
        self._model = end_model
        if self._model is not None and rate != MODEL_RATE:
            raise ValueError(f"the end model runs at {MODEL_RATE} Hz, got {rate}")
        self._scored_lse: float | None = None  # the speech end the model last scored the silence after
        self._scored_complete = False  # that score said complete (with dynamic: waiting for the speaker's window)
        self._pending: Any = None  # a Future of a threaded model's score, for the silence after _scored_lse
        self._poll_t = 0.0
        self._turn_no = 0  # turns started so far: a score request says which turn it is about
        self._prev_end_lse = -math.inf  # speech end of the last turn we ended (for false cut-off learning)
        self._turn_speech_t = 0.0
        self._model_buf: deque[tuple[float, np.ndarray]] = deque()  # (media t, float32) for the model

        self._state = _IDLE
        self._clock = -math.inf  # latest tick
        self._floor = -math.inf  # media time before which audio is late (last ActivityEnd decision)
        self._turn_t = 0.0  # clock time of the open turn's ActivityStart
        self._last_speech_end = -math.inf
        self._cand_start = 0.0  # media time the onset candidate began (state CANDIDATE)
        self._prev_win_end = -math.inf  # end of the last window judged (a gap before the next resets an onset)
        self._scored_end = -math.inf  # end of the last window scored (re-sent audio is not scored twice)
        self._level_db: float | None = None
        # Windowing: window k of a contiguous run starts at anchor_t + (anchor_n + k*win)/rate,
        # counted in samples so long sessions do not drift.
        self._anchor_t = 0.0
        self._anchor_n = 0
        self._rem = np.zeros(0, np.float32)
        self._stream_end = -math.inf  # media time just after the last sample that has arrived
        self._history: deque[tuple[float, np.ndarray]] = deque()  # (media t, samples) for pre-roll

    @property
    def state(self) -> TurnState:
        return self._state

    @property
    def turn_open(self) -> bool:
        return self._state is _OPEN

    @property
    def last_level_db(self) -> float | None:
        """Level of the newest scored window, dBFS (None before the first window)."""
        return self._level_db

    def _to(self, new: TurnState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise InvalidState(f"detector cannot go from {self._state.value} to {new.value}")
        self._state = new

    def _check_live(self, what: str) -> None:
        if self._state is _FINISHED:
            raise InvalidState(f"detector is finished: {what} after finish()")

    # --- input ------------------------------------------------------------------------------------------------

    def frame(self, t: float, samples: np.ndarray) -> list[Decision]:
        """Feed one mono frame whose first sample has media time ``t``; any length, int16 or float.

        Decided at the clock of the latest ``tick`` (a decision's ``t`` is never before it)."""
        return self._ingest(t, samples, None)

    def feed(self, t: float, samples: np.ndarray, clock: FileClock) -> list[Decision]:
        """Feed a stretch of a file replayed on ``clock`` (``t``: media time of its first sample, on a frame
        boundary; every stretch but the last a whole number of frames).  The decisions are those ``tick`` and
        ``frame`` would make on that schedule; ``finish(duration)`` ends the file."""
        i0 = round(t * self.rate)
        if i0 % clock.frame_n or abs(i0 / self.rate - t) > 1 / self.rate / 4:
            raise ValueError(f"feed: t = {t!r} is not on a {clock.frame_n}-sample frame boundary")
        if self._stream_end != -math.inf and abs(t - self._stream_end) > _EPS:
            raise ValueError(f"feed: t = {t!r} does not continue the stretch that ended at {self._stream_end!r}")
        return self._ingest(t, samples, clock)

    def tick(self, t: float) -> list[Decision]:
        """Advance the clock; ends the open turn on silence or max turn even if no frame arrives."""
        if self._state is _FINISHED:
            self._check_live("tick")
        if t > self._clock:
            self._clock = t
        out: list[Decision] = []
        while self._state is _OPEN:
            due, reason = self._end_due()
            if self._clock < due - _EPS:
                break
            self._reach(self._clock, reason, self._clock, out)
        return out

    def next_deadline(self) -> float | None:
        """Clock time at which ``tick`` would end the open turn (silence or max turn); None when none is open.

        Lets the live loop sleep until then instead of ticking on a grid while frames flow.
        """
        return self._end_due()[0] if self._state is _OPEN else None

    def finish(self, t: float) -> list[Decision]:
        """End of audio at clock ``t``: a turn still open ends with reason ``end_of_audio``.  Afterwards ``frame``,
        ``feed`` and ``tick`` raise ``InvalidState``."""
        self._check_live("finish")
        out = self.tick(t)
        if self._state is _OPEN:
            out.append(self._end(self._clock, "end_of_audio"))
        self._to(_FINISHED)
        return out

    def _ingest(self, t: float, samples: np.ndarray, clock: FileClock | None) -> list[Decision]:
        if self._state is _FINISHED:
            self._check_live("frame" if clock is None else "feed")
        raw = np.asarray(samples)
        if raw.ndim != 1:
            raise ValueError(f"samples must be mono and 1-D, got shape {raw.shape}")
        n = raw.shape[0]
        if n == 0:
            return []
        if raw.dtype == np.int16:
            x = raw.astype(np.float32)
            x *= _INT16_SCALE
        else:
            x = raw.astype(np.float32, copy=False)
        frame_end = t + n / self.rate

        if self._rem.size and abs(t - self._stream_end) <= _CONTIGUOUS_S:
            buf = np.concatenate([self._rem, x])
        elif clock is not None and self._stream_end != -math.inf:
            buf = x  # a file's stretches continue one another: keep counting samples from the file's start
        else:
            buf = x
            self._anchor_t, self._anchor_n = t, 0
        prev_end = self._stream_end
        self._stream_end = frame_end
        self._history.append((t, raw))
        if self._model is not None:
            self._model_buf.append((t, x))
            while self._model_buf and self._model_buf[0][0] + self._model_buf[0][1].shape[0] / self.rate < \
                    frame_end - MODEL_WINDOW_S - 0.5 - (n / self.rate if clock is not None else 0.0):
                self._model_buf.popleft()

        nwin = buf.shape[0] // self._win
        out: list[Decision] = []
        if nwin:
            windows = buf[: nwin * self._win].reshape(nwin, self._win)
            level_db = np.vecdot(windows, windows)  # mean square, then dBFS, in place
            level_db *= 1 / self._win
            np.maximum(level_db, 1e-12, out=level_db)
            np.log10(level_db, out=level_db)
            level_db *= 10.0
            base = self._anchor_n
            if clock is None and nwin <= _JUDGE_EACH:
                self._judge_each(base, windows, level_db, frame_end, out)
                self._anchor_n = base + nwin * self._win
                self._rem = buf[nwin * self._win :]
                self._trim_history()
                return out
            idx = base + np.arange(nwin + 1) * self._win  # sample offsets of the window edges from the anchor
            edges = self._anchor_t + idx / self.rate
            # Re-sent audio (a frame overlapping windows already scored) is cut before scoring, so a stateful
            # scorer sees each stretch of audio once, in order.
            first = int(np.searchsorted(edges[:-1], self._scored_end - _EPS, side="left"))
            if first < nwin:
                scores, starts, stays = self._scorer.score(windows[first:], level_db[first:])
                self._scored_end = float(edges[-1])
                arrivals = None
                if clock is not None:
                    # A window is judged when the frame holding its last sample arrives.
                    a0 = round(self._anchor_t * self.rate)
                    end_n = a0 + idx[first + 1 :]
                    stop_n = round(frame_end * self.rate)
                    arrivals = np.minimum(-(-end_n // clock.frame_n) * clock.frame_n, stop_n) / self.rate
                    self._stream_end = prev_end
                self._walk(edges[first:-1], edges[first + 1 :], np.asarray(scores, np.float64),
                           np.asarray(starts, bool), np.asarray(stays, bool), level_db[first:], arrivals,
                           clock, frame_end, out)
                if clock is not None:
                    self._catch_up(frame_end, clock, out)  # the last frame's arrival, even when it holds no window
            self._anchor_n = base + nwin * self._win
        elif clock is not None:
            self._stream_end = prev_end
            self._catch_up(frame_end, clock, out)
        self._stream_end = frame_end
        self._rem = buf[nwin * self._win :]
        self._trim_history()
        return out

    # --- the walk over scored windows -------------------------------------------------------------------------

    def _judge_each(self, base: int, windows: np.ndarray, level_db: np.ndarray, frame_end: float,
                    out: list[Decision]) -> None:
        """A live frame's few windows: scored at once, then judged one by one in plain floats (what ``_walk``
        does for them too, without the arrays it needs to find runs)."""
        rate, a, w = self.rate, self._anchor_t, self._win
        edges = [a + (base + k * w) / rate for k in range(windows.shape[0] + 1)]
        first = 0
        while first < windows.shape[0] and edges[first] < self._scored_end - _EPS:
            first += 1  # re-sent audio: not scored twice
        if first == windows.shape[0]:
            return
        scores, starts, stays = self._scorer.score(windows[first:], level_db[first:])
        self._scored_end = edges[-1]
        rows = zip(_floats(scores), _floats(starts), _floats(stays), level_db[first:].tolist(), strict=True)
        for k, (sc, st, sy, lv) in enumerate(rows, start=first):
            self._judge(edges[k], edges[k + 1], sc, st, sy, lv, frame_end, out)

    def _walk(self, ws: np.ndarray, we: np.ndarray, score: np.ndarray, start: np.ndarray, stay: np.ndarray,
              level: np.ndarray, arrivals: np.ndarray | None, clock: FileClock | None, frame_end: float,
              out: list[Decision]) -> None:
        """Judge windows ``ws..we`` in order; runs where nothing can happen are applied at once (``_skip``)."""
        n = ws.shape[0]
        if n <= _JUDGE_EACH:  # a live frame's few windows: judging each costs less than finding runs
            rows = zip(ws.tolist(), we.tolist(), score.tolist(), start.tolist(), stay.tolist(), level.tolist(),
                       arrivals.tolist() if arrivals is not None else [frame_end] * n, strict=True)
            for w0, w1, sc, st, sy, lv, hi in rows:
                if arrivals is not None:
                    self._catch_up(hi, clock, out)  # type: ignore[arg-type]
                self._judge(w0, w1, sc, st, sy, lv, hi, out)
            return
        start_idx = np.flatnonzero(start)
        stay_we = np.where(stay, we, -np.inf)
        k = 0
        while k < n:
            st = self._state
            if st is _IDLE:
                # Nothing happens until a window that may start speech and is not late.
                lo = int(np.searchsorted(ws, self._floor - _EPS, side="left"))
                p = int(np.searchsorted(start_idx, max(k, lo), side="left"))
                j = int(start_idx[p]) if p < start_idx.shape[0] else n
            elif st is _CANDIDATE:
                j = k
            else:
                j = self._next_open_event(k, ws, we, stay, stay_we, arrivals)
            if j > k:
                self._skip(k, j, ws, we, stay, stay_we, level)
            if j >= n:
                return
            if arrivals is not None:
                self._catch_up(float(arrivals[j]), clock, out)  # type: ignore[arg-type]
                hi = float(arrivals[j])
            else:
                hi = frame_end
            self._judge(float(ws[j]), float(we[j]), float(score[j]), bool(start[j]), bool(stay[j]),
                        float(level[j]), hi, out)
            k = j + 1

    def _next_open_event(self, k: int, ws: np.ndarray, we: np.ndarray, stay: np.ndarray, stay_we: np.ndarray,
                         arrivals: np.ndarray | None) -> int:
        """The first window from ``k`` on at which an open turn may change other than by extending its speech:
        a deadline reached (by the window or the clock of its frame), or a pause the dynamic window observes.
        Conservative: judging a window one by one is always right, skipping it must change nothing else."""
        n = ws.shape[0]
        lse0 = self._last_speech_end
        due0 = self._end_due()[0]
        max_due = self._turn_t + self._max_turn_s
        grow = self._silence_s if (self._model is not None or self._dyn is None) else self._dyn.window_s
        # Speech end before each window: the running maximum of the stay windows' ends, from the current one.
        cm = np.maximum.accumulate(stay_we[k:])
        before = np.empty(n - k)
        before[0] = lse0
        np.maximum(cm[:-1], lse0, out=before[1:])
        due = np.where(before > lse0, np.minimum(before + grow, max_due), due0)
        seen = we[k:] if arrivals is None else np.maximum(we[k:], arrivals[k:])
        if arrivals is None:
            seen = np.maximum(seen, self._clock)
        hit = seen >= due - _EPS
        if self._dyn is not None:
            hit |= stay[k:] & (ws[k:] - before >= MIN_PAUSE_S - _EPS)
        if self._pending is not None:
            hit |= stay[k:]  # speech resuming drops the pending score: judge it one by one
        i = int(np.argmax(hit)) if hit.any() else n - k
        return k + i

    def _skip(self, k: int, j: int, ws: np.ndarray, we: np.ndarray, stay: np.ndarray, stay_we: np.ndarray,
              level: np.ndarray) -> None:
        """Apply windows ``k..j-1`` in one step: the walk found nothing in them but levels and, in a turn, speech."""
        lo = int(np.searchsorted(ws, self._floor - _EPS, side="left"))
        lo = max(lo, k)
        if lo >= j:
            return  # all late: ignored
        self._level_db = float(level[j - 1])
        self._prev_win_end = float(we[j - 1])
        if self._state is _OPEN:
            last = float(stay_we[lo:j].max())
            if last > -math.inf:
                self._last_speech_end = last
                self._drop_pending("speech")

    def _catch_up(self, arrival: float, clock: FileClock, out: list[Decision]) -> None:
        """On a ``FileClock``: the ticks before the frame arriving at ``arrival``, then its arrival tick.

        A tick that reaches no deadline changes nothing but the clock, so only the first schedule time (a grid
        tick or a frame's arrival) at or after the open turn's deadline is ticked, then the next while the turn
        stays open.  At a tick the audio known is that of the frames arrived strictly before it."""
        if arrival <= self._clock:
            return
        fn, rate = clock.frame_n, self.rate
        while self._state is _OPEN:
            due = self._end_due()[0]
            x = max(due - _EPS, self._clock)
            m = max(0, math.ceil(x / clock.tick_s) - 1)
            while m * clock.tick_s < x:
                m += 1
            a_n = -(-math.ceil(x * rate - 1e-6) // fn) * fn
            tick_t = min(m * clock.tick_s, a_n / rate)
            if tick_t >= arrival:
                break
            self._stream_end = max(0, (math.ceil(tick_t * rate - 1e-6) - 1) // fn * fn) / rate
            before = (self._state, self._last_speech_end, self._scored_lse, self._pending, self._poll_t)
            out += self.tick(tick_t)
            if before == (self._state, self._last_speech_end, self._scored_lse, self._pending, self._poll_t):
                break  # nothing was due after all: the arrival tick comes next
        self._stream_end = max(0, (round(arrival * rate) - 1) // fn * fn) / rate
        out += self.tick(arrival)
        self._stream_end = arrival

    # --- deadlines and the rules per window -------------------------------------------------------------------

    def _end_due(self) -> tuple[float, str]:
        """The next deadline of the open turn and what happens then: silence, score, max_silence, max_turn."""
        lse = self._last_speech_end
        window = self._dyn.window_s if self._dyn is not None else self._silence_s
        cap = lse + self._max_silence_s  # the longest the model may hold the turn open
        if self._model is None:
            due, reason = lse + window, "silence"
        elif self._pending is not None:  # a score still running never holds the turn past the cap
            due, reason = (self._poll_t, "poll") if self._poll_t < cap else (cap, "max_silence")
        elif self._scored_lse != lse:
            due, reason = lse + self._silence_s, "score"
        elif self._scored_complete:  # with dynamic endpointing: complete, once the speaker's window has passed
            due, reason = lse + window, "end_model"
        else:  # scored incomplete for this silence: wait for the longer window
            due, reason = cap, "max_silence"
        max_due = self._turn_t + self._max_turn_s
        return (due, reason) if due <= max_due else (max_due, "max_turn")

    def _reach(self, t: float, reason: str, upto: float, out: list[Decision]) -> None:
        """The deadline ``reason`` is reached at clock ``t`` (audio known up to media time ``upto``)."""
        if reason not in ("score", "poll"):
            out.append(self._end(t, reason))
            return
        lse = self._last_speech_end
        if reason == "score":
            self._scored_lse = lse
            if hasattr(self._model, "submit"):
                self._pending = self._model.submit(self._model_audio(upto), turn=self._turn_no)
                self._poll_t = t + POLL_S
                return
            p = float(self._model.probability(self._model_audio(upto)))
        else:
            if not self._pending.done():
                self._poll_t = max(t, self._poll_t) + POLL_S
                return
            p = float(self._pending.result())
            self._pending = None
        complete = p >= self.params.end_threshold
        out.append(Decision(kind=DecisionKind.END_SCORE, t=t, speech_t=lse,
                            reason="complete" if complete else "incomplete",
                            level_db=self._level_db, probability=round(p, 4),
                            silence_ms=round((t - lse) * 1000, 1)))
        self._scored_complete = complete
        if complete and (self._dyn is None or t >= lse + self._dyn.window_s - _EPS):
            out.append(self._end(t, "end_model"))

    def _model_audio(self, upto: float) -> np.ndarray:
        """The turn's audio up to media time ``upto`` (its last 8 s); audio not yet arrived is zeros."""
        lo = max(self._turn_speech_t - self._pre_roll_s, upto - MODEL_WINDOW_S)
        known = max(lo, min(upto, self._stream_end))
        parts = self._slices(self._model_buf, lo, known)
        x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        missing = round((upto - known) * self.rate)
        if missing > 0:  # DTX / stopped frames: the silence the clock measured
            x = np.concatenate([x, np.zeros(missing, np.float32)])
        return x

    def _judge(self, ws: float, we: float, score: float, start: bool, stay: bool, level: float,
               frame_end: float, out: list[Decision]) -> None:
        """The rules for one window (module docstring), in the state the detector is in."""
        if ws < self._floor - _EPS:
            return  # late: an ActivityEnd at or after this audio was already decided
        self._level_db = level
        gap = ws > self._prev_win_end + _EPS
        self._prev_win_end = we
        if self._state is _OPEN:
            due, reason = self._end_due()
            while self._state is _OPEN and ws >= due - _EPS and reason != "poll":
                # The silence ran out before this window (in a pts gap): decide there, then judge the window afresh.
                self._reach(max(due, self._clock), reason, ws, out)
                due, reason = self._end_due()
            if self._state is _OPEN:
                if stay:
                    if self._dyn is not None and ws - self._last_speech_end >= MIN_PAUSE_S - _EPS:
                        self._dyn.observe(ws - self._last_speech_end)
                    self._last_speech_end = we
                    self._drop_pending("speech")  # speech resumed: a score still running is about a silence that ended
                due, reason = self._end_due()
                while self._state is _OPEN and we >= due - _EPS and reason != "poll":
                    self._reach(max(due, self._clock), reason, we, out)
                    due, reason = self._end_due()
                return
            if ws < self._floor - _EPS:
                return
        if self._state is _CANDIDATE and (gap or not stay):
            self._to(_IDLE)
        if self._state is _IDLE:
            if not start:
                return
            self._to(_CANDIDATE)
            self._cand_start = ws
        speech_s = we - self._cand_start
        if speech_s >= self._min_speech_s - _EPS:
            speech_t = self._cand_start
            t = max(we, self._clock)
            self._to(_OPEN)
            self._turn_t = t
            self._turn_speech_t = speech_t
            if self._dyn is not None and speech_t - self._prev_end_lse <= self._max_silence_s:
                self._dyn.observe(speech_t - self._prev_end_lse)  # we cut them off: the window should cover this
            self._last_speech_end = we
            self._scored_lse = None
            self._drop_pending("ended")
            self._turn_no += 1
            lo = max(speech_t - self._pre_roll_s, self._floor)
            out.append(Decision(
                kind=DecisionKind.SPEECH_START, t=t, speech_t=speech_t,
                reason=self._scorer.start_reason(score, level, speech_s * 1000),
                level_db=level, pre_roll=self._audio_between(lo, frame_end),
            ))

    def _drop_pending(self, reason: str) -> None:
        """A score still running went stale (``reason``: "speech" or "ended"): forget it, tell the worker."""
        if self._pending is not None:
            cancel = getattr(self._pending, "cancel", None)
            if cancel is not None:
                cancel(reason)
            self._pending = None

    def _end(self, t: float, reason: str) -> Decision:
        self._to(_IDLE)
        self._drop_pending("ended")  # the cap or max turn came first: a score still running is late
        self._floor = max(self._floor, t)
        self._prev_end_lse = self._last_speech_end
        return Decision(kind=DecisionKind.SPEECH_END, t=t, speech_t=self._last_speech_end, reason=reason,
                        level_db=self._level_db)

    def _slices(self, chunks: Iterable[tuple[float, np.ndarray]], lo: float, hi: float) -> list[np.ndarray]:
        """The parts of ``(media t, samples)`` chunks that fall in media time ``[lo, hi)``, in order."""
        parts: list[np.ndarray] = []
        for ct, chunk in chunks:
            ce = ct + chunk.shape[0] / self.rate
            if ce <= lo + _EPS or ct >= hi - _EPS:
                continue
            i0 = max(0, round((lo - ct) * self.rate))
            i1 = min(chunk.shape[0], round((hi - ct) * self.rate))
            if i1 > i0:
                parts.append(chunk[i0:i1])
        return parts

    def _audio_between(self, lo: float, hi: float) -> np.ndarray:
        parts = self._slices(self._history, lo, hi)
        if not parts:
            return np.zeros(0, np.float32)
        if all(p.dtype == np.int16 for p in parts):
            return np.concatenate(parts)
        return np.concatenate([p.astype(np.float32) / 32768 if p.dtype == np.int16 else p.astype(np.float32)
                               for p in parts])

    def _trim_history(self) -> None:
        cand = self._state is _CANDIDATE
        newest = min(self._stream_end, self._cand_start) if cand else self._stream_end
        keep_from = newest - self._pre_roll_s - self._min_speech_s - 0.05
        h = self._history
        while h and h[0][0] + h[0][1].shape[0] / self.rate < keep_from:
            h.popleft()


def _floats(x: Any) -> list[Any]:
    """A scorer's column as a plain list (scorers may return numpy arrays or lists)."""
    return x.tolist() if isinstance(x, np.ndarray) else list(x)
