"""The end-of-turn model's worker: one per runner, scoring every session's requests off the event loop.

The queue's rules (newest first, one live request per session, stale requests dropped or their answers ignored)
are ``workbench.core.endturn.ScoreQueue``; this module is the shell that runs the model in a child process (or a
thread) and carries the answers back.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

import numpy as np

from workbench.core.endturn import _WINDOW_N, END_MODEL_NAMES, RATE, PendingScore, ScoreQueue, last_window
from workbench.store.models import SmartTurn, make_end_model, smart_turn_path


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

    Why this shape (the figures are in bench/BENCHMARKS.md, "End-of-turn model and the event loop"):

    - a score is tens of ms of numpy features and a few hundred ms of onnxruntime CPU on one thread;
    - onnxruntime releases the GIL, the features hold it in pieces of up to ~15 ms: on a thread of the
      loop's process they delay the loop;
    - a thread per session runs many calls at once on few cores: each then takes longer than the policy
      waits for it (``max_silence_ms - silence_ms``), and a stale call keeps running unless cancelled;
    - a batch along axis 0 costs about the same CPU per score, and its first answer waits for the whole
      batch: ``max_batch`` defaults to 1.

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
        self._queue = ScoreQueue(event=threading.Event)  # answered on the worker's thread, waited on elsewhere
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
