"""End-of-turn model: Smart Turn v3.2 on onnxruntime, with Whisper-style log-mel features in numpy.

Why a model: silence alone cannot tell a candidate thinking from a candidate done; Smart Turn reads
the prosody of the turn's last 8 s and says "complete" or "incomplete".  What is known about it
(issue 15, measured on real speech with mid-clause hesitations): scored after 0.2 s of silence it
calls 40-50 % of hesitations complete and 15-20 % of true ends incomplete, ~80 ms a call on a 2-core
CPU; so the turn detector uses it only as one voice beside the clock (see ``turns.py``).

The model file ``smart-turn-v3.2-cpu.onnx`` (BSD-2-Clause, Daily) ships inside pipecat-ai's wheel,
installed with ``pip install --no-deps pipecat-ai`` (none of pipecat's dependencies); it is found
without importing pipecat, or from ``$WORKBENCH_SMART_TURN_ONNX``.

Features, as the model was trained on (Whisper's feature extractor with an 8 s window): the waveform
normalised to zero mean and unit variance, a centred STFT (400-point periodic Hann window, hop 160,
reflect padding), power spectrum, 80 Slaney-normalised mel filters on the Slaney mel scale over
0-8 kHz, log10 floored at 1e-10, clamped to 8 below the maximum, then ``(x + 4) / 4``: (80, 800).
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import math
import os
import threading
import time
from collections import Counter, deque
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
WINDOW_S = 8.0  # the model reads the turn's last 8 s, zero-padded at the front when shorter
N_FFT = 400
HOP = 160
N_MELS = 80
_WINDOW_N = int(WINDOW_S * RATE)
SMART_TURN_ENV = "WORKBENCH_SMART_TURN_ONNX"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"
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


def smart_turn_path() -> Path | None:
    """Where ``smart-turn-v3.2-cpu.onnx`` is: $WORKBENCH_SMART_TURN_ONNX, else inside pipecat-ai's wheel."""
    env = os.environ.get(SMART_TURN_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("pipecat")  # does not import pipecat (its __init__ needs loguru)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "audio" / "turn" / "smart_turn" / "data" / SMART_TURN_FILE
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=4)
def _session(path: str, threads: int = 1):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # default 1: the bridge shares its cores with the event loop
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SmartTurn:
    """``probability(audio)``: P(turn complete) for the turn's audio up to now (16 kHz float32)."""

    name = "smart-turn"

    def __init__(self, threads: int = 1) -> None:
        """``threads``: onnxruntime's intra-op threads (1 unless the model has a process to itself)."""
        path = smart_turn_path()
        if path is None:
            raise RuntimeError(
                f"end model 'smart-turn' needs {SMART_TURN_FILE}: `pip install --no-deps pipecat-ai` "
                f"or set {SMART_TURN_ENV} to the file"
            )
        self._sess = _session(str(path), threads)
        self.last_ms = 0.0  # wall time of the last call (features + inference), for the event log

    def probability(self, audio: np.ndarray) -> float:
        t0 = time.perf_counter()
        feats = log_mel(last_window(audio))[None, :, :]
        out = self._sess.run(None, {"input_features": feats})
        self.last_ms = (time.perf_counter() - t0) * 1000
        return float(np.asarray(out[0]).reshape(-1)[0])

    def probabilities(self, audios: list[np.ndarray]) -> list[float]:
        """Several turns at once: one onnxruntime run over a batch along axis 0 (every input is 8 s).

        Measured on this 2-core CPU, one thread: ~20 % less CPU per score in a batch of 2-4 than one by one."""
        feats = np.stack([log_mel(last_window(a)) for a in audios])
        out = self._sess.run(None, {"input_features": feats})
        return [float(v) for v in np.asarray(out[0]).reshape(len(audios), -1)[:, 0]]


class MemoEndModel:
    """A model that scores identical audio once (offline replays of many settings share most windows)."""

    def __init__(self, model: SmartTurn) -> None:
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


class PendingScore:
    """One request to score a turn: which session and turn it is about, its audio, and its answer.

    The turn detector holds it while the silence grows and looks at ``done()`` on its clock
    (``turns.POLL_S``); ``cancel(reason)`` says it went stale (speech resumed, the turn ended).
    ``wait`` is for callers off the event loop (tests, shutdown), never for the detector.
    """

    def __init__(self, owner: Any, session: str, turn: int, seq: int, audio: np.ndarray | None) -> None:
        self.session, self.turn, self.seq = session, turn, seq
        self.audio = audio
        self.state = ScoreState.QUEUED
        self.stale: str | None = None  # one of STALE_REASONS once stale
        self._owner = owner
        self._p = math.nan
        self._error: str | None = None
        self._settled = threading.Event()

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

    def __init__(self) -> None:
        self._queue: deque[PendingScore] = deque()
        self._live: dict[str, PendingScore] = {}
        self._seq = 0
        self.counts: Counter[str] = Counter()

    def submit(self, session: str, turn: int, audio: np.ndarray, owner: Any = None) -> PendingScore:
        old = self._live.get(session)
        if old is not None:
            self.cancel(old, "superseded")
        self._seq += 1
        req = PendingScore(self if owner is None else owner, session, turn, self._seq, audio)
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


class SessionEndModel:
    """What one session's ``TurnDetector`` holds: ``submit(audio, turn)`` tags the request with the session."""

    def __init__(self, worker: EndModelWorker, session: str) -> None:
        self.worker, self.session, self.name = worker, session, worker.name

    def submit(self, audio: np.ndarray, turn: int = 0) -> PendingScore:
        return self.worker.submit(self.session, turn, audio)


def _serve(conn: Any, name: str, threads: int) -> None:
    """The worker process: load the model, then score batches of 8 s windows (float32 bytes, one after another)
    until EOF or an empty message; answers ``("ok", [p, ...])`` or ``("error", one line)``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    try:
        model = make_end_model(name, threads)
        model.probability(np.zeros(RATE, np.float32))  # load and warm before the first real request
    except Exception as exc:  # noqa: BLE001 - reported to the parent in one line
        conn.send(("error", f"end model {name!r} failed to load: {exc}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not msg:
            return
        try:
            conn.send(("ok", model.probabilities(list(np.frombuffer(msg, np.float32).reshape(-1, _WINDOW_N)))))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"end model {name!r} failed: {type(exc).__name__}: {exc}"))


class EndModelWorker:
    """One end-of-turn model for every session of a process, scored off the event loop.

    Owned by whoever runs sessions (``bridge.run_session`` for a lone session, ``serve``'s server,
    the bench), handed to each session's detector as ``session(name)``, closed when the runner ends
    (``close`` joins the thread and the process: nothing is left behind).  Requests carry their session
    and turn; ``ScoreQueue`` says which are stale (dropped before they cost a call, or their answer
    ignored); the turn detector applies answers on its clock, as it always did.

    Why this shape, by measurement (bench/BENCHMARKS.md, "End-of-turn model and the event loop";
    2-core EPYC shared with other jobs):

    - one score is ~20-35 ms of numpy features and ~290 ms of onnxruntime CPU on one thread;
    - onnxruntime releases the GIL (a 1 ms sleeper beside it: p99 lateness 3.0 ms, idle 2.3 ms), the
      features do not, in pieces of up to ~15 ms (p99 8.2 ms, max 15 ms): on a thread they stall the loop;
    - the old thread per session ran up to 10 calls at once on 2 cores: each then took ~2 s (305 ms
      alone), longer than the 1.7 s the policy waits for it (``max_silence_ms - silence_ms`` in the
      bench), and a stale call kept running (nothing cancelled it): the CPU went to answers nobody read,
      which is why that run made 10 scores where inline made 104;
    - a batch along axis 0 costs about the same CPU per score (288 / 262 / 267 ms alone / in 2 / in 4;
      293 / 287 / 297 in another run), and its first answer waits for the whole batch: ``max_batch``
      defaults to 1;
    - with it, loop lag p99 (stalls counted) was 22.5 ms at 10 sessions where the same loop with no model
      measured 19.7 ms a minute earlier, against 56 ms for the same queue on a thread and seconds for
      the thread per session or inline (machine at load 8-10; every figure there moves with it).

    Hence one request at a time, newest first, in one child process (``process=True``, the default for
    a named model): the loop's process only slices the audio and writes 512 KB to a pipe, and never
    shares its GIL with the features.  ``process=False`` runs the same queue on a thread (a model object
    that cannot be sent to a process: tests, stubs).  ``threads``: onnxruntime's intra-op threads in
    the worker (1: the other core is the loop's).
    """

    def __init__(self, model: str | Any = "smart-turn", *, process: bool | None = None, max_batch: int = 1,
                 threads: int = 1, start_timeout_s: float = 60.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._proc: Any = None
        self._conn: Any = None
        self._model: Any = None
        if isinstance(model, str):
            if model not in END_MODEL_NAMES or model == "none":
                raise ValueError(f"unknown end model {model!r}; choose one of {', '.join(END_MODEL_NAMES[1:])}")
            if model == "smart-turn" and smart_turn_path() is None:
                SmartTurn()  # raises the one-line "needs the file" error here, not in the child
            self.name = model
            if process is False:
                self._model = make_end_model(model, threads)
            else:
                import multiprocessing

                ctx = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
                self._conn, child = ctx.Pipe()
                self._proc = ctx.Process(target=_serve, args=(child, model, threads), name="end-model", daemon=True)
                self._proc.start()
                child.close()
        else:
            if process:
                raise ValueError("a model object runs on a thread (process=False); name the model to run a process")
            self._model = model
            self.name = getattr(model, "name", type(model).__name__)
        self._start_timeout_s = start_timeout_s
        self._queue = ScoreQueue()
        self._cond = threading.Condition()
        self._closed = False
        self._sessions = 0
        self._thread = threading.Thread(target=self._run, name="end-model", daemon=True)
        self._thread.start()

    def __enter__(self) -> EndModelWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._queue.counts)

    def session(self, name: str) -> SessionEndModel:
        """A handle for one session's detector (names are made unique: two sessions may share one)."""
        with self._cond:
            self._sessions += 1
            return SessionEndModel(self, f"{name}#{self._sessions}")

    def submit(self, session: str, turn: int, audio: np.ndarray) -> PendingScore:
        x = last_window(audio)  # what the model reads: a fixed 8 s, so requests batch along axis 0
        with self._cond:
            if self._closed:
                raise RuntimeError("the end model worker is closed")
            req = self._queue.submit(session, turn, x, owner=self)
            self._cond.notify()
        return req

    def cancel(self, req: PendingScore, reason: str) -> None:
        with self._cond:
            self._queue.cancel(req, reason)

    def close(self, timeout_s: float = 10.0) -> None:
        """Drop what is queued, let the running call finish, stop the thread and the process (idempotent)."""
        with self._cond:
            self._closed = True
            self._queue.close()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._proc is not None:
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout_s)
            self._conn.close()
            self._proc = None

    def _run(self) -> None:
        broken = self._start() if self._proc is not None else None
        while True:
            with self._cond:
                while not (batch := self._queue.take(self.max_batch)) and not self._closed:
                    self._cond.wait()
                if not batch:
                    break
                audios = [req.audio for req in batch]
            if broken is not None:
                ps, err = [math.nan] * len(batch), broken
            else:
                ps, err = self._score(audios)
                if err is not None and self._proc is not None and not self._proc.is_alive():
                    broken = err
            with self._cond:
                for req, p in zip(batch, ps, strict=True):
                    self._queue.answer(req, p, err)
        if self._proc is not None:
            with contextlib.suppress(OSError):  # the child's signal to exit (read after loading, if still loading)
                self._conn.send_bytes(b"")

    def _start(self) -> str | None:
        """Wait for the child to load the model; its one-line error, if any, answers every request."""
        deadline = time.monotonic() + self._start_timeout_s
        while not self._conn.poll(0.1):
            if self._closed:
                return "closed"
            if time.monotonic() > deadline:
                return f"end model {self.name!r} did not load within {self._start_timeout_s:g} s"
        try:
            kind, detail = self._conn.recv()
        except (EOFError, OSError):
            return f"end model {self.name!r} worker process exited while loading"
        return detail if kind == "error" else None

    def _score(self, audios: list[np.ndarray]) -> tuple[list[float], str | None]:
        nan = [math.nan] * len(audios)
        if self._proc is None:
            try:
                many = getattr(self._model, "probabilities", None)
                ps = many(audios) if many is not None else [self._model.probability(a) for a in audios]
                return [float(p) for p in ps], None
            except Exception as exc:  # noqa: BLE001 - the detector raises it where it reads the score
                return nan, f"end model {self.name!r} failed: {type(exc).__name__}: {exc}"
        try:
            self._conn.send_bytes(np.concatenate(audios).tobytes())
            kind, v = self._conn.recv()
        except (EOFError, OSError):
            return nan, f"end model {self.name!r} worker process exited"
        return ([float(p) for p in v], None) if kind == "ok" else (nan, str(v))

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


def make_end_model(name: str, threads: int = 1) -> SmartTurn | None:
    """The end-of-turn model ``name`` names (``none`` -> None)."""
    if name == "none":
        return None
    if name == "smart-turn":
        return SmartTurn(threads)
    raise ValueError(f"unknown end model {name!r}; choose one of {', '.join(END_MODEL_NAMES)}")
