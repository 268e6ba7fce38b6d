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
  A model with ``submit(audio, turn) -> pending`` (``endturn.EndModelWorker``'s
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
  held tail ~50 ms after packets stop (``workbench.ingest``, ``LoopDecoder.release``),
  so it arrives well inside the silence window and ends its turn by media time:
  a turn's last syllable is sent before its ActivityEnd.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.endpointing import MIN_PAUSE_S, DynamicWindow
from workbench.endturn import END_MODEL_NAMES
from workbench.endturn import RATE as MODEL_RATE
from workbench.endturn import WINDOW_S as MODEL_WINDOW_S
from workbench.scorers import SCORER_NAMES, make_scorer

_EPS = 1e-6  # seconds; absorbs float error in window times (a sample is 62.5 us)
_INT16_SCALE = np.float32(1 / 32768)
_CONTIGUOUS_S = 0.001  # a frame starting within 1 ms of the previous end continues the stream
ENDPOINTING_NAMES = ("fixed", "dynamic")
POLL_S = 0.005  # how often the clock looks at a model score running on a thread


@dataclass(frozen=True)
class TurnParams:
    """Turn-detection settings; every knob is recorded with a session and replayable offline."""

    start_db: float = -40.0
    stop_db: float = -45.0
    min_speech_ms: float = 100
    silence_ms: float = 700
    pre_roll_ms: float = 300
    max_turn_ms: float = 60000
    scorer: str = "energy"
    webrtcvad_mode: int = 3
    webrtcvad_frame_ms: int = 20
    silero_threshold: float = 0.5
    silero_neg_threshold: float = 0.35
    noise_margin_db: float = 0.0
    endpointing: str = "fixed"
    max_silence_ms: float = 3000
    dynamic_alpha: float = 0.3
    dynamic_margin: float = 1.0
    end_model: str = "none"
    end_threshold: float = 0.5

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter and its allowed range."""

        def check(name: str, lo: float, hi: float, what: str) -> None:
            v = getattr(self, name)
            bad_type = isinstance(v, bool) or not isinstance(v, int | float)
            if bad_type or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"TurnParams.{name} = {v!r} is out of range: {what}")

        check("start_db", -120, 0, "must be between -120 and 0 dBFS")
        check("stop_db", -120, self.start_db, f"must be between -120 dBFS and start_db ({self.start_db:g})")
        check("min_speech_ms", 0, 5000, "must be between 0 and 5000 ms")
        check("silence_ms", 10, 60000, "must be between 10 and 60000 ms")
        check("pre_roll_ms", 0, 5000, "must be between 0 and 5000 ms")
        check("max_turn_ms", self.min_speech_ms + 1, 3_600_000,
              f"must be between min_speech_ms + 1 ({self.min_speech_ms + 1:g}) and 3600000 ms")
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"TurnParams.scorer = {self.scorer!r} is not one of: {', '.join(SCORER_NAMES)}")
        if self.webrtcvad_mode not in (0, 1, 2, 3) or isinstance(self.webrtcvad_mode, bool):
            raise ValueError(f"TurnParams.webrtcvad_mode = {self.webrtcvad_mode!r} must be 0, 1, 2 or 3")
        if self.webrtcvad_frame_ms not in (10, 20, 30) or isinstance(self.webrtcvad_frame_ms, bool):
            raise ValueError(
                f"TurnParams.webrtcvad_frame_ms = {self.webrtcvad_frame_ms!r} must be 10, 20 or 30"
            )
        check("silero_threshold", 0.01, 0.99, "must be between 0.01 and 0.99")
        check("silero_neg_threshold", 0.01, self.silero_threshold,
              f"must be between 0.01 and silero_threshold ({self.silero_threshold:g})")
        check("noise_margin_db", 0, 60, "must be between 0 (off) and 60 dB")
        if self.endpointing not in ENDPOINTING_NAMES:
            raise ValueError(f"TurnParams.endpointing = {self.endpointing!r} is not one of: "
                             f"{', '.join(ENDPOINTING_NAMES)}")
        check("max_silence_ms", 10, 60000, "must be between 10 and 60000 ms (below silence_ms it is silence_ms)")
        check("dynamic_alpha", 0.01, 1, "must be between 0.01 and 1")
        check("dynamic_margin", 0.1, 10, "must be between 0.1 and 10")
        if self.end_model not in END_MODEL_NAMES:
            raise ValueError(f"TurnParams.end_model = {self.end_model!r} is not one of: {', '.join(END_MODEL_NAMES)}")
        check("end_threshold", 0.01, 0.99, "must be between 0.01 and 0.99")

    @property
    def policy(self) -> str:
        """A short name of the end-of-turn policy: scorer, then dynamic and/or model when used."""
        parts = [self.scorer]
        if self.endpointing == "dynamic":
            parts.append("dynamic")
        if self.end_model != "none":
            parts.append(self.end_model)
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TurnParams:
        """Build and validate; unknown keys and wrong types are errors, not silently dropped."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in fields:
                raise ValueError(f"unknown TurnParams key {key!r}; known: {', '.join(fields)}")
            kind = fields[key].type  # a string: annotations are postponed
            try:
                if isinstance(value, bool):
                    raise TypeError
                if kind == "str":
                    if not isinstance(value, str):
                        raise TypeError
                    kwargs[key] = value
                elif kind == "int":
                    if float(value) != int(value):
                        raise TypeError
                    kwargs[key] = int(value)
                else:
                    kwargs[key] = float(value)
            except (TypeError, ValueError):
                msg = f"TurnParams.{key} = {value!r} has the wrong type; expected {kind}"
                raise ValueError(msg) from None
        params = cls(**kwargs)
        params.validate()
        return params

    @classmethod
    def from_file(cls, path: str | Path) -> TurnParams:
        """Read a JSON object of parameters (missing keys keep their defaults)."""
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of TurnParams")
        return cls.from_dict(d)


@dataclass(frozen=True)
class Decision:
    """A turn boundary: ``t`` is the clock time it was taken, ``speech_t`` the media time it refers to."""

    kind: str  # "speech_start" | "speech_end" | "end_score"
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
    """Hysteresis + minimum speech + clock-measured silence + pre-roll + maximum turn length."""

    def __init__(self, params: TurnParams, rate: int = 16000, end_model: Any = None) -> None:
        """``end_model``: the model ``params.end_model`` names, an object with ``probability(audio16k) -> float``
        (scored inline) or ``submit(audio16k, turn) -> pending`` (scored off the loop).  The detector never
        builds it: whoever runs the detector owns the model's life (``endturn.make_end_model``,
        ``endturn.EndModelWorker``), so one model serves many sessions.  Required when
        ``params.end_model`` is not ``none``."""
        params.validate()
        self.params = params
        self.rate = rate
        self._scorer = make_scorer(params, rate)
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
            raise ValueError(f"end_model={params.end_model!r} needs a model object (endturn.make_end_model or "
                             "endturn.EndModelWorker().session(name))")
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

        self._clock = -math.inf  # latest tick
        self._floor = -math.inf  # media time before which audio is late (last ActivityEnd decision)
        self._open = False
        self._turn_t = 0.0  # clock time of the open turn's ActivityStart
        self._last_speech_end = -math.inf
        self._cand_start: float | None = None  # media time the onset candidate began
        self._prev_win_end = -math.inf
        self._level_db: float | None = None
        # Windowing: window k of a contiguous run starts at anchor_t + (anchor_n + k*win)/rate,
        # counted in samples so long sessions do not drift.
        self._anchor_t = 0.0
        self._anchor_n = 0
        self._rem = np.zeros(0, np.float32)
        self._stream_end = -math.inf  # media time just after the last frame's last sample
        self._history: deque[tuple[float, np.ndarray]] = deque()  # (media t, samples) for pre-roll

    @property
    def turn_open(self) -> bool:
        return self._open

    @property
    def last_level_db(self) -> float | None:
        """Level of the newest scored window, dBFS (None before the first window)."""
        return self._level_db

    def frame(self, t: float, samples: np.ndarray) -> list[Decision]:
        """Feed one mono frame whose first sample has media time ``t``; any length, int16 or float."""
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
        else:
            buf = x
            self._anchor_t, self._anchor_n = t, 0
        self._stream_end = frame_end
        self._history.append((t, raw))
        if self._model is not None:
            self._model_buf.append((t, x))
            while self._model_buf and self._model_buf[0][0] + self._model_buf[0][1].shape[0] / self.rate < \
                    frame_end - MODEL_WINDOW_S - 0.5:
                self._model_buf.popleft()

        nwin = buf.shape[0] // self._win
        out: list[Decision] = []
        if nwin:
            windows = buf[: nwin * self._win].reshape(nwin, self._win)
            level_db = np.vecdot(windows, windows)  # mean square, then dBFS, in place: this runs ~50 times a second
            level_db *= 1 / self._win
            np.maximum(level_db, 1e-12, out=level_db)
            np.log10(level_db, out=level_db)
            level_db *= 10.0
            base = self._anchor_n
            w0 = self._anchor_t + base / self.rate
            # Late windows are cut before scoring so a stateful scorer never sees them.
            first = 0
            while first < nwin and w0 + first * self._win_s < max(self._floor, self._prev_win_end) - _EPS:
                first += 1
            if first < nwin:
                scores, starts, stays = self._scorer.score(windows[first:], level_db[first:])
                levels = level_db[first:].tolist()
                rows = zip(scores, starts, stays, levels, strict=True)
                for k, (score, start, stay, lev) in enumerate(rows, start=first):
                    ws = self._anchor_t + (base + k * self._win) / self.rate
                    we = self._anchor_t + (base + (k + 1) * self._win) / self.rate
                    self._window(ws, we, score, start, stay, lev, frame_end, out)
            self._anchor_n = base + nwin * self._win
        self._rem = buf[nwin * self._win :]
        self._trim_history()
        return out

    def tick(self, t: float) -> list[Decision]:
        """Advance the clock; ends the open turn on silence or max turn even if no frame arrives."""
        if t > self._clock:
            self._clock = t
        out: list[Decision] = []
        while self._open:
            due, reason = self._end_due()
            if self._clock < due - _EPS:
                break
            self._reach(self._clock, reason, self._clock, out)
        return out

    def next_deadline(self) -> float | None:
        """Clock time at which ``tick`` would end the open turn (silence or max turn); None when none is open.

        Lets the live loop sleep until then instead of ticking on a grid while frames flow.
        """
        return self._end_due()[0] if self._open else None

    def finish(self, t: float) -> list[Decision]:
        """End of audio at clock ``t``: a turn still open ends with reason ``end_of_audio``."""
        out = self.tick(t)
        if self._open:
            out.append(self._end(self._clock, "end_of_audio"))
        self._cand_start = None
        return out

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
        out.append(Decision(kind="end_score", t=t, speech_t=lse, reason="complete" if complete else "incomplete",
                            level_db=self._level_db, probability=round(p, 4),
                            silence_ms=round((t - lse) * 1000, 1)))
        self._scored_complete = complete
        if complete and (self._dyn is None or t >= lse + self._dyn.window_s - _EPS):
            out.append(self._end(t, "end_model"))

    def _drop_pending(self, reason: str) -> None:
        """A score still running went stale (``reason``: "speech" or "ended"): forget it, tell the worker."""
        if self._pending is not None:
            cancel = getattr(self._pending, "cancel", None)
            if cancel is not None:
                cancel(reason)
            self._pending = None

    def _model_audio(self, upto: float) -> np.ndarray:
        """The turn's audio up to media time ``upto`` (its last 8 s); frames that never came are zeros."""
        lo = max(self._turn_speech_t - self._pre_roll_s, upto - MODEL_WINDOW_S)
        parts = self._slices(self._model_buf, lo, upto)
        x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        missing = round((upto - max(lo, min(upto, self._stream_end))) * self.rate)
        if missing > 0:  # DTX / stopped frames: the silence the clock measured
            x = np.concatenate([x, np.zeros(missing, np.float32)])
        return x

    def _window(self, ws: float, we: float, score: float, start: bool, stay: bool, level: float,
                frame_end: float, out: list[Decision]) -> None:
        if ws < self._floor - _EPS:
            return  # late: an ActivityEnd at or after this audio was already decided
        self._level_db = level
        gap = ws > self._prev_win_end + _EPS
        self._prev_win_end = we
        if self._open:
            due, reason = self._end_due()
            while self._open and ws >= due - _EPS and reason != "poll":
                # The silence ran out before this window (in a pts gap): decide there, then judge the window afresh.
                self._reach(max(due, self._clock), reason, ws, out)
                due, reason = self._end_due()
            if self._open:
                if stay:
                    if self._dyn is not None and ws - self._last_speech_end >= MIN_PAUSE_S - _EPS:
                        self._dyn.observe(ws - self._last_speech_end)
                    self._last_speech_end = we
                    self._drop_pending("speech")  # speech resumed: a score still running is about a silence that ended
                due, reason = self._end_due()
                while self._open and we >= due - _EPS and reason != "poll":
                    self._reach(max(due, self._clock), reason, we, out)
                    due, reason = self._end_due()
                return
            if ws < self._floor - _EPS:
                return
        if gap or not stay:
            self._cand_start = None
        if self._cand_start is None and start:
            self._cand_start = ws
        if self._cand_start is None:
            return
        speech_s = we - self._cand_start
        if speech_s >= self._min_speech_s - _EPS:
            speech_t = self._cand_start
            t = max(we, self._clock)
            self._open = True
            self._turn_t = t
            self._turn_speech_t = speech_t
            if self._dyn is not None and speech_t - self._prev_end_lse <= self._max_silence_s:
                self._dyn.observe(speech_t - self._prev_end_lse)  # we cut them off: the window should cover this
            self._last_speech_end = we
            self._scored_lse = None
            self._drop_pending("ended")
            self._turn_no += 1
            self._cand_start = None
            lo = max(speech_t - self._pre_roll_s, self._floor)
            out.append(Decision(
                kind="speech_start", t=t, speech_t=speech_t,
                reason=self._scorer.start_reason(score, level, speech_s * 1000),
                level_db=level, pre_roll=self._audio_between(lo, frame_end),
            ))

    def _end(self, t: float, reason: str) -> Decision:
        self._open = False
        self._drop_pending("ended")  # the cap or max turn came first: a score still running is late
        self._floor = max(self._floor, t)
        self._cand_start = None
        self._prev_end_lse = self._last_speech_end
        return Decision(kind="speech_end", t=t, speech_t=self._last_speech_end, reason=reason,
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
        newest = self._stream_end if self._cand_start is None else min(self._stream_end, self._cand_start)
        keep_from = newest - self._pre_roll_s - self._min_speech_s - 0.05
        h = self._history
        while h and h[0][0] + h[0][1].shape[0] / self.rate < keep_from:
            h.popleft()
