"""End-of-turn policies with exact times (stub model), the Smart Turn features against a reference, the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, child_pids, end_model_threads

from workbench.core import endturn
from workbench.core.endpointing import DynamicWindow
from workbench.core.params import TurnParams
from workbench.core.turns import TurnDetector
from workbench.io import endmodel
from workbench.store import models

RATE = 16000
FRAME = 320  # 20 ms
LOUD = (0.1 * np.sin(2 * np.pi * 220 * np.arange(FRAME) / RATE)).astype(np.float32)  # -23 dBFS
QUIET = np.zeros(FRAME, np.float32)


class StubModel:
    """Stands in for the network (an external model, not our code): answers a fixed sequence, keeps the audio."""

    def __init__(self, *probs: float) -> None:
        self.probs = list(probs)
        self.audio: list[np.ndarray] = []

    def probability(self, audio: np.ndarray) -> float:
        self.audio.append(audio)
        return self.probs.pop(0)


def drive(det: TurnDetector, plan: list[tuple[float, float, bool]], until: float, tick_s: float = 0.01):
    """Frames per ``plan`` (start s, end s, loud) every 20 ms, ticking every 10 ms, up to ``until``.

    A span with loud=None sends no frames at all (DTX): only the clock runs.
    """
    out = []
    k = 0
    for a, b, loud in plan:
        t = a
        while t < b - 1e-9:
            while k * tick_s <= t + 1e-9:
                out += det.tick(round(k * tick_s, 6))
                k += 1
            if loud is not None:
                out += det.frame(round(t, 6), LOUD if loud else QUIET)
            t = round(t + FRAME / RATE, 6)
    while k * tick_s <= until + 1e-9:
        out += det.tick(round(k * tick_s, 6))
        k += 1
    return out


def kinds(decisions):
    return [(d.kind, round(d.t, 3), d.reason) for d in decisions]


def test_complete_ends_the_turn_when_the_model_scores_after_silence_ms() -> None:
    model = StubModel(0.9)
    det = TurnDetector(TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=2000), end_model=model)
    out = drive(det, [(0, 1.0, True), (1.0, 3.0, False)], 3.0)
    assert kinds(out)[1:] == [("end_score", 1.3, "complete"), ("speech_end", 1.3, "end_model")]
    assert out[1].probability == 0.9 and out[1].silence_ms == pytest.approx(300)
    # The model heard the turn from its pre-roll (0.3 s before speech, clipped at 0) to the scoring time.
    assert model.audio[0].shape[0] == round(1.3 * RATE)


def test_incomplete_waits_up_to_max_silence_and_scores_once_per_silence() -> None:
    model = StubModel(0.2, 0.1)
    det = TurnDetector(TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=1500), end_model=model)
    # A thinking pause of 1 s (scored incomplete, not cut off), then the true end scored incomplete too.
    out = drive(det, [(0, 1.0, True), (1.0, 2.0, False), (2.0, 3.0, True), (3.0, 6.0, False)], 6.0)
    assert kinds(out)[1:] == [("end_score", 1.3, "incomplete"), ("end_score", 3.3, "incomplete"),
                              ("speech_end", 4.5, "max_silence")]
    assert model.probs == []


def test_dtx_the_clock_alone_scores_and_the_missing_frames_are_silence() -> None:
    model = StubModel(0.8)
    det = TurnDetector(TurnParams(silence_ms=400, end_model="smart-turn"), end_model=model)
    out = drive(det, [(0, 1.0, True), (1.0, 3.0, None)], 3.0)  # frames stop at 1.0 s
    assert kinds(out)[1:] == [("end_score", 1.4, "complete"), ("speech_end", 1.4, "end_model")]
    audio = model.audio[0]
    assert audio.shape[0] == round(1.4 * RATE)
    assert np.all(audio[round(1.0 * RATE):] == 0) and np.abs(audio[: round(1.0 * RATE)]).max() > 0.05


def test_dynamic_window_learns_the_pause_after_a_cut_off() -> None:
    det = TurnDetector(TurnParams(silence_ms=300, endpointing="dynamic", max_silence_ms=2000, dynamic_alpha=1.0))
    out = drive(det, [(0, 1.0, True), (1.0, 1.8, False), (1.8, 2.8, True), (2.8, 5.0, False)], 5.0)
    ends = [(round(d.t, 3), d.reason) for d in out if d.kind == "speech_end"]
    # First pause: the 300 ms floor cuts it off; the speaker resumed 0.8 s after their speech end,
    # so the next window is 0.8 s: the true end at 2.8 s ends at 3.6 s.
    assert ends == [(1.3, "silence"), (3.6, "silence")]


def test_dynamic_with_the_model_incomplete_waits_to_max_silence() -> None:
    model = StubModel(0.1)
    det = TurnDetector(TurnParams(silence_ms=300, endpointing="dynamic", end_model="smart-turn",
                                  max_silence_ms=3000, dynamic_alpha=1.0), end_model=model)
    # An inner pause of 0.24 s (not scored: under silence_ms) is learned; the window stays at its 300 ms floor.
    out = drive(det, [(0, 1.0, True), (1.0, 1.24, False), (1.24, 2.0, True), (2.0, 6.0, False)], 6.0)
    assert kinds(out)[1:] == [("end_score", 2.3, "incomplete"), ("speech_end", 5.0, "max_silence")]


def test_dynamic_with_the_model_complete_still_waits_the_speakers_window() -> None:
    model = StubModel(0.9, 0.9)
    det = TurnDetector(TurnParams(silence_ms=300, endpointing="dynamic", end_model="smart-turn",
                                  max_silence_ms=3000, dynamic_alpha=1.0), end_model=model)
    # The model's first "complete" cuts the speaker off at 1.3 s (window still 300 ms); they resume 0.8 s after
    # their speech end, so the next "complete" (at 3.1 s) ends the turn only when the silence reaches 0.8 s.
    out = drive(det, [(0, 1.0, True), (1.0, 1.8, False), (1.8, 2.8, True), (2.8, 5.0, False)], 5.0)
    assert kinds(out)[1:] == [("end_score", 1.3, "complete"), ("speech_end", 1.3, "end_model"),
                              ("speech_start", 1.9, kinds(out)[3][2]), ("end_score", 3.1, "complete"),
                              ("speech_end", 3.6, "end_model")]


def test_dynamic_window_clamps_and_ignores_short_gaps() -> None:
    w = DynamicWindow(0.5, 2.0, alpha=0.5)
    assert w.window_s == 0.5
    w.observe(0.1)
    assert w.pauses == 0 and w.window_s == 0.5
    w.observe(1.0)
    w.observe(3.0)  # clamped to max before averaging
    assert w.ema_s == pytest.approx(1.5) and w.window_s == pytest.approx(1.5)
    with pytest.raises(ValueError):
        DynamicWindow(1.0, 0.5)


def test_bad_policy_params_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="endpointing"):
        TurnParams(endpointing="adaptive").validate()
    with pytest.raises(ValueError, match="end_model"):
        TurnParams(end_model="gpt").validate()
    with pytest.raises(ValueError, match="end_threshold"):
        TurnParams(end_threshold=1.5).validate()


_REF = Path(models.smart_turn_path() or "/nonexistent").parents[1] / "_whisper_features.py"


@pytest.mark.skipif(not _REF.is_file(), reason="pipecat-ai's wheel (reference features) not installed")
def test_log_mel_matches_the_reference_whisper_features() -> None:
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", _REF)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)  # numpy only: pipecat itself is not imported
    x, _ = sf.read(REPO / "recordings" / "thinking.flac", dtype="float32")
    for a, b in ((1.0, 6.0), (0.0, 9.5), (20.0, 30.0)):
        audio = endturn.last_window(x[int(a * RATE) : int(b * RATE)])
        want = ref.compute_whisper_log_mel_features(audio, do_normalize=True)
        got = endturn.log_mel(audio)
        assert got.shape == want.shape == (80, 800)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_log_mel_puts_a_tone_in_the_right_band() -> None:
    t = np.arange(8 * RATE) / RATE
    feats = endturn.log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    band = int(np.argmax(feats[:, 400]))
    lo, hi = endturn._mel_to_hz(np.linspace(0, endturn._hz_to_mel(8000.0), 82)[[band, band + 2]])
    assert lo < 1000 < hi


@pytest.mark.skipif(models.smart_turn_path() is None, reason="smart-turn-v3.2-cpu.onnx not installed")
def test_smart_turn_scores_real_speech() -> None:
    x, _ = sf.read(REPO / "recordings" / "thinking.flac", dtype="float32")
    p = models.SmartTurn().probability(x[RATE : int(6.2 * RATE)])
    assert 0.0 <= p <= 1.0


class SubmitModel:
    def __init__(self, p: float, polls: int) -> None:
        self.p, self.polls, self.submitted = p, polls, 0

    def submit(self, audio: np.ndarray, turn: int = 0) -> endturn.ReadyAfter:
        self.submitted += 1
        return endturn.ReadyAfter(self.p, self.polls)


def test_a_threaded_score_is_polled_on_the_clock_and_decides_when_ready() -> None:
    model = SubmitModel(0.9, polls=3)  # ready at the 4th look: 4 polls of 5 ms after submitting
    det = TurnDetector(TurnParams(silence_ms=300, end_model="smart-turn"), end_model=model)
    assert drive(det, [(0, 1.0, True)], 1.0)  # the turn is open
    assert det.next_deadline() == pytest.approx(1.3)
    out = []
    t = 1.0
    while det.turn_open and t < 2.0:
        t = det.next_deadline()
        out += det.tick(t)
    assert kinds(out) == [("end_score", 1.32, "complete"), ("speech_end", 1.32, "end_model")]
    assert out[0].silence_ms == pytest.approx(320)  # the inference time is in the latency


def test_speech_resuming_while_a_threaded_score_runs_makes_it_stale() -> None:
    model = SubmitModel(0.9, polls=1000)
    det = TurnDetector(TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=1000), end_model=model)
    out = drive(det, [(0, 1.0, True), (1.0, 1.4, False), (1.4, 2.0, True), (2.0, 4.0, None)], 4.0)
    # The first score never came back before speech resumed (dropped, no decision); the second silence
    # is scored again and that score never returns either: the turn still ends on the clock at the cap.
    assert model.submitted == 2
    assert kinds(out)[1:] == [("speech_end", 3.0, "max_silence")]


@pytest.mark.skipif(models.smart_turn_path() is None, reason="smart-turn-v3.2-cpu.onnx not installed")
def test_cli_vad_with_the_end_model_prints_the_same_json(capsys, tmp_path) -> None:
    import json

    from workbench.ui.cli import main

    x, rate = sf.read(REPO / "recordings" / "thinking.flac", dtype="int16")
    clip = tmp_path / "answer1.flac"
    sf.write(clip, x[: int(17.0 * rate)], rate)  # the first answer, with its three pauses (thinking.pauses.txt)
    assert main(["vad", str(clip), "--format", "json", "--silence-ms", "300",
                 "--end-model", "smart-turn", "--max-silence-ms", "1500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"params", "turns"} and out["params"]["end_model"] == "smart-turn"
    assert set(out["turns"][0]) == {"speech_start", "activity_start", "activity_end", "end_reason", "speech_end"}
    reasons = {t["end_reason"] for t in out["turns"]}
    assert reasons <= {"end_model", "max_silence", "end_of_audio"} and reasons & {"end_model", "max_silence"}


def test_cli_end_model_without_the_file_is_one_line(capsys, monkeypatch) -> None:
    from workbench.ui.cli import main

    monkeypatch.setenv(models.SMART_TURN_ENV, "/nonexistent.onnx")
    assert main(["vad", str(REPO / "recordings" / "thinking.flac"), "--end-model", "smart-turn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error: --end-model smart-turn needs") and err.count("\n") == 1


def test_run_and_demo_take_the_end_of_turn_flags() -> None:
    from workbench.ui.cli import _params, build_parser

    for cmd in (["run", "--audio", "x.wav"], ["demo"]):
        args = build_parser().parse_args([*cmd, "--endpointing", "dynamic", "--max-silence-ms", "2500",
                                          "--noise-margin-db", "13", "--silence-ms", "400"])
        p = _params(args)
        assert (p.endpointing, p.max_silence_ms, p.noise_margin_db, p.silence_ms) == ("dynamic", 2500, 13, 400)
        assert p.end_model == "none"
    if models.smart_turn_path() is not None:
        args = build_parser().parse_args(["run", "--audio", "x.wav", "--end-model", "smart-turn",
                                          "--end-threshold", "0.7"])
        assert (_params(args).end_model, _params(args).end_threshold) == ("smart-turn", 0.7)


# -- the shared end-of-turn worker --------------------------------------------------------------------


def test_the_queue_answers_every_live_request_once_and_drops_stale_ones() -> None:
    q = endturn.ScoreQueue()
    a = q.submit("s1", 1, np.full(4, 1, np.float32))
    b = q.submit("s2", 1, np.full(4, 2, np.float32))
    c = q.submit("s3", 1, np.full(4, 3, np.float32))
    b.cancel("speech")  # speech resumed while it waited: never scored
    assert b.state is endturn.ScoreState.DROPPED and b.audio is None
    batch = q.take(4)
    assert batch == [c, a] and [r.audio[0] for r in batch] == [3, 1]  # newest first: it has the most time left
    c.cancel("ended")  # the cap came while the model ran it: scored, the answer ignored
    d = q.submit("s1", 2, np.full(4, 4, np.float32))  # s1's next turn: a is about a silence that is over
    assert a.stale == "superseded"
    q.answer(a, 0.9)
    q.answer(c, 0.8)
    assert a.state is c.state is endturn.ScoreState.IGNORED and not a.done()
    with pytest.raises(RuntimeError, match="not done"):
        a.result()
    assert q.take(4) == [d]
    with pytest.raises(RuntimeError, match="not running"):
        q.answer(b, 0.5)
    q.answer(d, 0.7)
    assert d.done() and d.result() == pytest.approx(0.7) and (d.session, d.turn) == ("s1", 2)
    d.cancel("speech")  # already answered: nothing changes
    assert d.state is endturn.ScoreState.DONE and d.stale is None
    assert q.take(4) == [] and q.waiting == 0
    assert q.counts == {"submitted": 4, "answered": 1, "dropped": 1, "ignored": 2, "stale_speech": 1,
                        "stale_ended": 1, "stale_superseded": 1}
    with pytest.raises(ValueError, match="stale reason"):
        q.cancel(d, "bored")


def test_the_queue_settles_every_request_in_a_random_run() -> None:
    rng = np.random.default_rng(7)
    q = endturn.ScoreQueue()
    reqs: list[endturn.PendingScore] = []
    running: list[endturn.PendingScore] = []
    for _ in range(400):
        op = rng.integers(4)
        if op == 0:
            reqs.append(q.submit(f"s{rng.integers(5)}", int(rng.integers(3)), np.zeros(1, np.float32)))
        elif op == 1 and reqs:
            reqs[rng.integers(len(reqs))].cancel(str(rng.choice(["speech", "ended"])))
        elif op == 2:
            running += q.take(int(rng.integers(1, 4)))
        elif running:
            q.answer(running.pop(0), 0.5)
    while running or q.waiting:
        running += q.take(4)
        q.answer(running.pop(0), 0.5)
    states = [r.state for r in reqs]
    assert all(s in (endturn.ScoreState.DONE, endturn.ScoreState.DROPPED, endturn.ScoreState.IGNORED) for s in states)
    assert all((r.state is endturn.ScoreState.DONE) == (r.stale is None) for r in reqs)  # answered iff never stale
    assert all(r._settled.is_set() for r in reqs)
    assert q.counts["answered"] == states.count(endturn.ScoreState.DONE) > 0
    assert q.counts["dropped"] + q.counts["ignored"] == len(reqs) - q.counts["answered"] > 0


class _Gate:
    """A model that blocks inside its first call until released: the worker is driven without timing."""

    name = "gate"

    def __init__(self) -> None:
        import threading

        self.started, self.release = threading.Event(), threading.Event()
        self.seen: list[float] = []

    def probability(self, audio: np.ndarray) -> float:
        self.started.set()
        assert self.release.wait(30)
        self.seen.append(float(audio[-1]))
        return float(audio[-1]) / 10


def test_the_worker_scores_what_is_live_drops_what_went_stale_and_closes() -> None:
    gate = _Gate()
    before = end_model_threads()
    with endmodel.EndModelWorker(gate, process=False) as worker:
        s1, s2, s3 = worker.session("a"), worker.session("a"), worker.session("b")
        assert len({s1.session, s2.session, s3.session}) == 3  # two sessions may share a name
        one = s1.submit(np.full(10, 1, np.float32), turn=1)
        assert gate.started.wait(30)  # the worker runs it now; the next two wait in the queue
        two = s2.submit(np.full(10, 2, np.float32), turn=1)
        three = s3.submit(np.full(10, 3, np.float32), turn=4)
        two.cancel("speech")
        gate.release.set()
        assert one.wait(30) and three.wait(30) and two.wait(0)
        assert one.result() == pytest.approx(0.1) and three.result() == pytest.approx(0.3)
        assert two.state is endturn.ScoreState.DROPPED
        assert gate.seen == [1, 3]  # the stale request never reached the model
        assert worker.counts["answered"] == 2 and worker.counts["dropped"] == 1
        assert "end-model" in end_model_threads()
    assert end_model_threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("a", 1, np.zeros(10, np.float32))


def test_the_detector_tells_the_worker_which_scores_went_stale() -> None:
    q = endturn.ScoreQueue()

    class Handle:  # a session's handle onto a queue nobody serves: every score stays pending
        def submit(self, audio: np.ndarray, turn: int = 0) -> endturn.PendingScore:
            return q.submit("s", turn, audio)

    det = TurnDetector(TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=1000), end_model=Handle())
    out = drive(det, [(0, 1.0, True), (1.0, 1.4, False), (1.4, 2.0, True), (2.0, 4.0, None)], 4.0)
    assert kinds(out)[1:] == [("speech_end", 3.0, "max_silence")]  # the same decisions as with any pending score
    assert q.counts == {"submitted": 2, "dropped": 2, "stale_speech": 1, "stale_ended": 1}
    assert q.take(4) == []  # neither ever costs the model a call


def test_a_detector_needs_the_model_its_params_name() -> None:
    with pytest.raises(ValueError, match="needs a model object"):
        TurnDetector(TurnParams(end_model="smart-turn"))


@pytest.mark.skipif(models.smart_turn_path() is None, reason="smart-turn-v3.2-cpu.onnx not installed")
def test_serve_owns_one_worker_process_and_stop_closes_it(tmp_path) -> None:
    import asyncio

    from workbench.ui.web.server import ServeConfig, Server

    async def go() -> tuple[float, set[int]]:
        server = Server(ServeConfig(out_dir=tmp_path, params=TurnParams(end_model="smart-turn"), port=0))
        await server.start()
        assert server.end_model is not None
        h = server.end_model.session("browser")
        p = await asyncio.to_thread(lambda: (r := h.submit(np.zeros(RATE, np.float32))).wait(60) and r.result())
        running = child_pids()
        await server.stop()
        return p, running

    before = child_pids()
    p, running = asyncio.run(go())
    assert 0.0 <= p <= 1.0
    assert len(running - before) == 1  # the worker's process, while the server ran
    assert child_pids() == before and end_model_threads() == []
