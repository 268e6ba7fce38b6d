"""End-of-turn model, the sans-I/O part: Whisper-style log-mel features in numpy, and the score queue.

Why a model: silence alone cannot tell a candidate thinking from a candidate done; Smart Turn reads
the prosody of the turn's last 8 s and says "complete" or "incomplete".  What is known about it
(issue 15, measured on real speech with mid-clause hesitations): scored after 0.2 s of silence it
calls 40-50 % of hesitations complete and 15-20 % of true ends incomplete, ~80 ms a call on a 2-core
CPU; so the turn detector uses it only as one voice beside the clock (see ``turns.py``).

The model itself (``SmartTurn``: the ONNX file ``smart-turn-v3.2-cpu.onnx`` on onnxruntime) is loaded by
``workbench.store.models``; the worker that scores many sessions off the event loop
(``EndModelWorker``) is ``workbench.io.endmodel``.  What stays here runs the same live, in replay and in tests.

Features, as the model was trained on (Whisper's feature extractor with an 8 s window): the waveform
normalised to zero mean and unit variance, a centred STFT (400-point periodic Hann window, hop 160,
reflect padding), power spectrum, 80 Slaney-normalised mel filters on the Slaney mel scale over
0-8 kHz, log10 floored at 1e-10, clamped to 8 below the maximum, then ``(x + 4) / 4``: (80, 800).
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from workbench.core.pcm import SENT_RATE

RATE = SENT_RATE  # the model reads what the bridge sends
WINDOW_S = 8.0  # the model reads the turn's last 8 s, zero-padded at the front when shorter
N_FFT = 400
HOP = 160
N_MELS = 80
_WINDOW_N = int(WINDOW_S * RATE)
END_MODEL_NAMES = ("none", "smart-turn")


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * (27.0 / np.log(6.4)), lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * (np.log(6.4) / 27.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(N_FFT//2 + 1, N_MELS) triangular filters, each scaled to unit area (Slaney norm)."""
    fft_hz = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (fft_hz[:, None] - lo[None, :]) / (mid - lo)[None, :]
    down = (hi[None, :] - fft_hz[:, None]) / (hi - mid)[None, :]
    fb = np.maximum(0.0, np.minimum(up, down))
    return fb * (2.0 / (hi - lo))[None, :]


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic, as torch.hann_window / Whisper


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper-style log-mel features of 16 kHz audio: (N_MELS, len // HOP) float32 (800 frames for 8 s)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    pad = N_FFT // 2
    xp = np.pad(x, pad, mode="reflect")
    n_frames = 1 + (xp.shape[0] - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(xp[idx] * _hann()[None, :], axis=1)
    power = (spec.real**2 + spec.imag**2)[:-1]  # Whisper drops the last frame
    mel = power @ mel_filters()
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).T.astype(np.float32)


def last_window(audio: np.ndarray, window_s: float = WINDOW_S) -> np.ndarray:
    """The last ``window_s`` of ``audio``, zero-padded at the front when shorter."""
    n = int(window_s * RATE)
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.shape[0] >= n:
        return x[-n:]
    return np.concatenate([np.zeros(n - x.shape[0], np.float32), x])


class MemoEndModel:
    """A model that scores identical audio once (offline replays of many settings share most windows)."""

    def __init__(self, model: Any) -> None:
        """``model``: anything with ``probability(audio)`` and ``name`` (``store.models.SmartTurn``)."""
        self.model = model
        self.name = model.name
        self._memo: dict[bytes, float] = {}
        self.calls = 0

    def probability(self, audio: np.ndarray) -> float:
        import hashlib

        key = hashlib.blake2b(np.ascontiguousarray(audio, np.float32).tobytes(), digest_size=16).digest()
        p = self._memo.get(key)
        if p is None:
            p = self._memo[key] = self.model.probability(audio)
            self.calls += 1
        return p


class ScoreState(enum.Enum):
    """Where one score request is: queued -> running -> done, or dropped / ignored once stale."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # answered: ``result()`` holds the score
    DROPPED = "dropped"  # went stale while queued: never scored
    IGNORED = "ignored"  # went stale while the model ran: scored, the answer thrown away


STALE_REASONS = ("speech", "ended", "superseded", "closed")  # speech resumed / turn ended / newer request / closed


class _Flag:
    """``threading.Event``'s ``set``/``is_set``/``wait`` for one thread: ``wait`` cannot block, it says if it is set."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        return self._set


class PendingScore:
    """One request to score a turn: which session and turn it is about, its audio, and its answer.

    The turn detector holds it while the silence grows and looks at ``done()`` on its clock
    (``turns.POLL_S``); ``cancel(reason)`` says it went stale (speech resumed, the turn ended).
    ``wait`` is for callers off the event loop (tests, shutdown), never for the detector.
    """

    def __init__(self, owner: Any, session: str, turn: int, seq: int, audio: np.ndarray | None,
                 settled: Any = None) -> None:
        """``settled``: an object with ``set()`` and ``wait(timeout)`` (a ``threading.Event`` when a worker thread
        answers; by default a flag, enough when one thread does everything)."""
        self.session, self.turn, self.seq = session, turn, seq
        self.audio = audio
        self.state = ScoreState.QUEUED
        self.stale: str | None = None  # one of STALE_REASONS once stale
        self._owner = owner
        self._p = math.nan
        self._error: str | None = None
        self._settled = settled if settled is not None else _Flag()

    def __repr__(self) -> str:
        return f"PendingScore({self.session!r}, turn={self.turn}, seq={self.seq}, {self.state.value})"

    def done(self) -> bool:
        return self.state is ScoreState.DONE

    def result(self) -> float:
        """The score (P(turn complete)); raises if not answered, or the model's one-line error."""
        if self.state is not ScoreState.DONE:
            raise RuntimeError(f"score {self.seq} of {self.session} is {self.state.value}, not done")
        if self._error is not None:
            raise RuntimeError(self._error)
        return self._p

    def cancel(self, reason: str = "ended") -> None:
        self._owner.cancel(self, reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until answered, dropped or ignored; False on timeout."""
        return self._settled.wait(timeout)


class ScoreQueue:
    """Sans-I/O core of the shared worker: many sessions' score requests in, batches of them out to the model.

    Rules, in one place:

    - newest first across sessions: every request has the same time to its turn's cap once it is
      asked (``max_silence_ms - silence_ms``), so the newest has the most time left; when the model
      falls behind, the oldest are the ones that would come back too late anyway, and the detector
      drops them at their cap before they cost a call.  With no backlog the order does not matter;
    - at most one live request per session: a newer one makes the older stale (``superseded``; a
      detector holds one score at a time, so an older one is about a silence that is over);
    - a request cancelled while queued is dropped, never scored; one cancelled while the model runs
      it is scored but its answer ignored (``IGNORED``, never ``DONE``);
    - every other request is answered exactly once.  Misuse (answering one that is not running) raises.

    ``counts`` tallies submitted / answered / dropped / ignored and ``stale_<reason>``.
    """

    def __init__(self, event: Callable[[], Any] = _Flag) -> None:
        """``event``: makes each request's settled flag (``threading.Event`` when another thread waits on it)."""
        self._event = event
        self._queue: deque[PendingScore] = deque()
        self._live: dict[str, PendingScore] = {}
        self._seq = 0
        self.counts: Counter[str] = Counter()

    def submit(self, session: str, turn: int, audio: np.ndarray, owner: Any = None) -> PendingScore:
        old = self._live.get(session)
        if old is not None:
            self.cancel(old, "superseded")
        self._seq += 1
        req = PendingScore(self if owner is None else owner, session, turn, self._seq, audio, self._event())
        self._queue.append(req)
        self._live[session] = req
        self.counts["submitted"] += 1
        return req

    def cancel(self, req: PendingScore, reason: str) -> None:
        if reason not in STALE_REASONS:
            raise ValueError(f"stale reason {reason!r} is not one of: {', '.join(STALE_REASONS)}")
        if req.stale is not None or req.state not in (ScoreState.QUEUED, ScoreState.RUNNING):
            return  # already stale, or already answered (the detector read it or will drop it itself)
        req.stale = reason
        self.counts[f"stale_{reason}"] += 1
        if self._live.get(req.session) is req:
            del self._live[req.session]
        if req.state is ScoreState.QUEUED:
            req.state, req.audio = ScoreState.DROPPED, None
            self.counts["dropped"] += 1
            req._settled.set()

    def take(self, max_n: int = 1) -> list[PendingScore]:
        """Up to ``max_n`` of the newest live requests, newest first, now running (their audio is the model's input)."""
        batch: list[PendingScore] = []
        while self._queue and len(batch) < max_n:
            req = self._queue.pop()
            if req.state is ScoreState.QUEUED:
                req.state = ScoreState.RUNNING
                batch.append(req)
        return batch

    def answer(self, req: PendingScore, p: float = math.nan, error: str | None = None) -> None:
        """The model's answer (or one-line error) to a running request."""
        if req.state is not ScoreState.RUNNING:
            raise RuntimeError(f"{req!r} is not running; only a running request can be answered")
        if self._live.get(req.session) is req:
            del self._live[req.session]
        req.audio = None
        if req.stale is not None:
            req.state = ScoreState.IGNORED
            self.counts["ignored"] += 1
        else:
            req._p, req._error, req.state = float(p), error, ScoreState.DONE
            self.counts["answered"] += 1
        req._settled.set()

    def close(self) -> None:
        """Drop every queued request (``closed``); a running one is ignored when it comes back."""
        for req in list(self._queue):
            self.cancel(req, "closed")
        for req in list(self._live.values()):
            self.cancel(req, "closed")
        self._queue.clear()

    @property
    def waiting(self) -> int:
        return sum(r.state is ScoreState.QUEUED for r in self._queue)


class ReadyAfter:
    """A score that is ready at the ``polls + 1``-th ``done()``: a worker thread's latency, without its timing.

    Offline replays use it to charge inference time to the detector's decisions deterministically
    (``done()`` is looked at once per clock poll, see ``turns.py``).
    """

    def __init__(self, p: float, polls: int) -> None:
        self.p, self.left = p, polls

    def done(self) -> bool:
        self.left -= 1
        return self.left < 0

    def result(self) -> float:
        return self.p


