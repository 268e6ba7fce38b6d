"""The sans-I/O turn detector with exact timestamps: no sleeps, no audio devices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, tone

from workbench.core.params import TurnParams
from workbench.core.turns import Decision, DecisionKind, FileClock, InvalidState, TurnDetector, TurnState
from workbench.store.models import silero_model_path
from workbench.store.paramfile import read_params

RATE = 16000
FRAME = 320  # 20 ms


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def vowel(seconds: float, db: float = -23.0) -> np.ndarray:
    """A voiced, formant-shaped, syllable-rate modulated buzz: speech-like enough for the VADs."""
    t = np.arange(round(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 3 * t)) / RATE
    formants = [(700, 1.0), (1200, 0.5)]
    v = sum(np.sin(k * phase) * sum(g * np.exp(-(((k * 120 - f) / 300) ** 2)) for f, g in formants)
            for k in range(1, 30))
    v = v * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (v / np.sqrt(np.mean(v**2)) * 10 ** (db / 20)).astype(np.float32)


def feed(det: TurnDetector, x: np.ndarray, t0: float = 0.0, frame: int = FRAME, tick_s: float | None = 0.01,
         stop_at: float | None = None) -> list[Decision]:
    """Frames arrive when complete; the clock ticks every ``tick_s`` and at each arrival."""
    out: list[Decision] = []
    next_tick = t0
    for i in range(0, x.shape[0], frame):
        chunk = x[i : i + frame]
        arrival = t0 + (i + chunk.shape[0]) / RATE
        if stop_at is not None and arrival > stop_at + 1e-9:
            break
        while tick_s is not None and next_tick < arrival - 1e-9:
            out += det.tick(next_tick)
            next_tick += tick_s
        out += det.tick(arrival)
        out += det.frame(t0 + i / RATE, chunk)
    return out


def kinds(ds: list[Decision]) -> list[tuple[str, float, float, str]]:
    return [(d.kind, round(d.t, 6), round(d.speech_t, 6), d.reason) for d in ds]


def test_onset_after_min_speech_with_exact_times_and_reason() -> None:
    det = TurnDetector(TurnParams())
    out = feed(det, np.concatenate([silence(1.0), tone(1.0, -20)]))
    assert [(d.kind, round(d.t, 6), round(d.speech_t, 6)) for d in out] == [("speech_start", 1.1, 1.0)]
    assert out[0].reason == "level -20.0 dBFS >= -40 for 100 ms"
    assert out[0].level_db == pytest.approx(-20.0, abs=0.01)
    assert det.turn_open
    assert det.last_level_db == pytest.approx(-20.0, abs=0.01)


def test_silence_on_the_clock_ends_turn_when_frames_stop() -> None:
    """Failure B: after the last frame nothing arrives; ticks alone end the turn at last speech + silence."""
    det = TurnDetector(TurnParams())
    out = feed(det, np.concatenate([silence(1.0), tone(1.0, -20)]))
    assert [d.kind for d in out] == ["speech_start"]
    assert det.tick(2.5) == []
    assert det.tick(2.6999) == []
    end = det.tick(2.7)
    assert kinds(end) == [("speech_end", 2.7, 2.0, "silence")]
    assert not det.turn_open
    assert det.tick(10.0) == []


def test_sparse_ticks_end_at_tick_time_not_before() -> None:
    det = TurnDetector(TurnParams(silence_ms=500))
    feed(det, tone(1.0, -20))
    assert kinds(det.tick(4.0)) == [("speech_end", 4.0, 1.0, "silence")]


def test_silent_frames_end_turn_exactly_without_ticks() -> None:
    det = TurnDetector(TurnParams())
    out = feed(det, np.concatenate([tone(1.0, -20), silence(1.0)]), tick_s=None)
    assert kinds(out)[1] == ("speech_end", 1.7, 1.0, "silence")


def test_hysteresis_between_stop_and_start_levels() -> None:
    params = TurnParams()  # start -40, stop -45
    det = TurnDetector(params)
    # -42 dBFS alone never starts a turn ...
    assert feed(det, np.concatenate([silence(0.5), tone(2.0, -42)])) == []
    det = TurnDetector(params)
    # ... but keeps one open; -50 does not.
    x = np.concatenate([silence(0.5), tone(0.5, -20), tone(2.0, -42), tone(1.0, -50)])
    assert kinds(feed(det, x)) == [
        ("speech_start", 0.6, 0.5, "level -20.0 dBFS >= -40 for 100 ms"),
        ("speech_end", 3.7, 3.0, "silence"),
    ]


def test_onset_may_continue_on_stay_level_but_breaks_below_it() -> None:
    det = TurnDetector(TurnParams())
    # 50 ms loud + 50 ms at -42 (>= stop) = 100 ms of onset.
    assert kinds(feed(det, np.concatenate([silence(0.2), tone(0.05, -20), tone(0.5, -42)])))[0][:3] == (
        "speech_start", 0.3, 0.2)
    det = TurnDetector(TurnParams())
    # A quiet window restarts the count: 90 ms, dip, 90 ms never reaches 100 ms.
    x = np.concatenate([silence(0.2), tone(0.09, -20), silence(0.01), tone(0.09, -20), silence(1.0)])
    assert feed(det, x) == []


@pytest.mark.parametrize(("burst_s", "starts"), [(0.09, False), (0.1, True)])
def test_min_speech(burst_s: float, starts: bool) -> None:
    det = TurnDetector(TurnParams())
    out = feed(det, np.concatenate([silence(0.5), tone(burst_s, -20), silence(2.0)]))
    assert bool(out) == starts


def test_min_speech_zero_starts_on_first_window() -> None:
    det = TurnDetector(TurnParams(min_speech_ms=0))
    out = feed(det, np.concatenate([silence(0.5), tone(0.2, -20)]))
    assert kinds(out)[0][:3] == ("speech_start", 0.52, 0.5)  # decided when the 20 ms frame arrived


def test_pre_roll_contents_and_length_int16() -> None:
    rng = np.random.default_rng(1)
    quiet = rng.integers(-10, 11, size=RATE, dtype=np.int16)  # about -70 dBFS: below every threshold
    loud = (tone(1.0, -20) * 32768).astype(np.int16)
    x = np.concatenate([quiet, loud])
    det = TurnDetector(TurnParams(pre_roll_ms=300))
    start = feed(det, x)[0]
    assert (start.speech_t, start.t) == (pytest.approx(1.0), pytest.approx(1.1))
    assert start.pre_roll is not None and start.pre_roll.dtype == np.int16
    # From 300 ms before speech_t to the end of the triggering frame (1.1 s).
    assert start.pre_roll.shape[0] == round(0.4 * RATE)
    np.testing.assert_array_equal(start.pre_roll, x[round(0.7 * RATE) : round(1.1 * RATE)])


def test_pre_roll_runs_to_end_of_a_long_triggering_frame_and_is_clipped_at_audio_start() -> None:
    x = np.concatenate([silence(0.1), tone(1.0, -20)])
    det = TurnDetector(TurnParams(pre_roll_ms=300))
    out = det.frame(0.0, x)  # one 1.1 s frame
    assert out[0].speech_t == pytest.approx(0.1)
    np.testing.assert_array_equal(out[0].pre_roll, x)
    assert out[0].pre_roll.dtype == np.float32


def test_pre_roll_never_reaches_back_before_previous_activity_end() -> None:
    params = TurnParams(silence_ms=200, pre_roll_ms=1000)
    det = TurnDetector(params)
    x = np.concatenate([silence(1.0), tone(0.5, -20), silence(0.5), tone(0.5, -20)])
    out = feed(det, x)
    assert kinds(out)[:3] == [
        ("speech_start", 1.1, 1.0, "level -20.0 dBFS >= -40 for 100 ms"),
        ("speech_end", 1.7, 1.5, "silence"),
        ("speech_start", 2.1, 2.0, "level -20.0 dBFS >= -40 for 100 ms"),
    ]
    # 1 s of pre-roll would reach 1.0 s; it stops at the previous ActivityEnd (1.7 s) instead.
    assert out[2].pre_roll.shape[0] == round((2.1 - 1.7) * RATE)


def test_pre_roll_zero() -> None:
    det = TurnDetector(TurnParams(pre_roll_ms=0))
    out = feed(det, np.concatenate([silence(1.0), tone(0.5, -20)]))
    assert out[0].pre_roll.shape[0] == round(0.1 * RATE)  # speech_t .. end of triggering frame


def test_max_turn_forces_end_then_a_new_turn_starts() -> None:
    det = TurnDetector(TurnParams(max_turn_ms=1000))
    out = feed(det, np.concatenate([silence(0.5), tone(3.0, -20)]))
    assert [(d.kind, round(d.t, 6), d.reason) for d in out][:3] == [
        ("speech_start", 0.6, "level -20.0 dBFS >= -40 for 100 ms"),
        ("speech_end", 1.6, "max_turn"),
        ("speech_start", 1.7, "level -20.0 dBFS >= -40 for 100 ms"),
    ]
    assert out[2].speech_t == pytest.approx(1.6)


def test_max_turn_by_tick_alone() -> None:
    det = TurnDetector(TurnParams(max_turn_ms=1000, silence_ms=5000))
    feed(det, tone(0.5, -20))
    assert det.tick(1.0999) == []
    assert kinds(det.tick(1.1)) == [("speech_end", 1.1, 0.5, "max_turn")]


def test_stale_jitter_buffer_frames_after_activity_end_are_ignored() -> None:
    """aiortc holds the last ~80 ms of speech until packets resume: those frames must not reopen the turn."""
    det = TurnDetector(TurnParams())
    speech = tone(1.0, -20)
    held = 4 * FRAME  # 80 ms stuck in the jitter buffer
    feed(det, speech[:-held], t0=1.0)
    assert kinds(det.tick(2.62)) == [("speech_end", 2.62, 1.92, "silence")]
    out = []
    for k in range(4):  # arrive at clock 5.0 with their true media times 1.92 .. 2.0
        out += det.tick(5.0)
        out += det.frame(1.92 + k * 0.02, speech[-held + k * FRAME : -held + (k + 1) * FRAME])
    assert out == [] and not det.turn_open
    # New speech afterwards starts normally, and its pre-roll holds none of the stale audio.
    new = feed(det, np.concatenate([silence(0.5), tone(0.5, -20)]), t0=5.0)
    assert kinds(new)[0][:3] == ("speech_start", 5.6, 5.5)
    assert new[0].pre_roll.shape[0] == round(0.4 * RATE)
    assert float(np.abs(new[0].pre_roll[: round(0.3 * RATE)]).max()) == 0.0


def test_stale_frames_before_the_end_decision_extend_speech_by_media_time() -> None:
    det = TurnDetector(TurnParams())
    speech = tone(1.0, -20)
    feed(det, speech[:-4 * FRAME], t0=1.0)  # media up to 1.92
    assert det.tick(2.5) == []
    det.frame(1.92, speech[-4 * FRAME :])  # late, but the turn is still open: speech ran to 2.0
    assert det.tick(2.62) == []
    assert kinds(det.tick(2.7)) == [("speech_end", 2.7, 2.0, "silence")]


def test_decisions_never_go_back_before_the_latest_tick() -> None:
    det = TurnDetector(TurnParams())
    det.tick(10.0)
    out = det.frame(1.0, tone(0.5, -20))
    assert (out[0].t, out[0].speech_t) == (10.0, pytest.approx(1.0))


def test_pts_gap_counts_as_silence_even_without_ticks() -> None:
    det = TurnDetector(TurnParams())
    out = det.frame(1.0, tone(1.0, -20))
    out += det.frame(5.0, tone(0.5, -20))  # 3 s of skipped media, no tick in between
    assert kinds(out) == [
        ("speech_start", 1.1, 1.0, "level -20.0 dBFS >= -40 for 100 ms"),
        ("speech_end", 2.7, 2.0, "silence"),
        ("speech_start", 5.1, 5.0, "level -20.0 dBFS >= -40 for 100 ms"),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variable_frame_sizes_give_the_same_decisions(seed: int) -> None:
    x = np.concatenate([silence(0.73), tone(1.21, -20), silence(0.31), tone(0.4, -30), silence(1.5)])
    ref_det = TurnDetector(TurnParams())
    ref = [d for i in range(0, x.shape[0], FRAME) for d in ref_det.frame(i / RATE, x[i : i + FRAME])]
    rng = np.random.default_rng(seed)
    det = TurnDetector(TurnParams())
    out: list[Decision] = []
    i = 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 2000))
        out += det.frame(i / RATE, x[i : i + n])
        i += n
    assert [(d.kind, round(d.speech_t, 6)) for d in out] == [(d.kind, round(d.speech_t, 6)) for d in ref]
    assert [round(d.t, 6) for d in out if d.kind == "speech_end"] == [
        round(d.t, 6) for d in ref if d.kind == "speech_end"]


def test_int16_and_float32_agree() -> None:
    x = np.concatenate([silence(0.5), tone(1.0, -20), silence(1.0)])
    a = feed(TurnDetector(TurnParams()), x)
    b = feed(TurnDetector(TurnParams()), (x * 32768).astype(np.int16))
    assert kinds(a) == kinds(b)


def test_finish_closes_open_turn_and_prefers_silence_when_due() -> None:
    det = TurnDetector(TurnParams())
    feed(det, tone(1.0, -20))
    assert kinds(det.finish(1.3)) == [("speech_end", 1.3, 1.0, "end_of_audio")]
    det = TurnDetector(TurnParams())
    feed(det, tone(1.0, -20), tick_s=None)
    assert kinds(det.finish(3.0)) == [("speech_end", 3.0, 1.0, "silence")]
    assert TurnDetector(TurnParams()).finish(1.0) == []


def test_empty_and_non_mono_frames() -> None:
    det = TurnDetector(TurnParams())
    assert det.frame(0.0, np.zeros(0, np.int16)) == []
    with pytest.raises(ValueError, match="mono"):
        det.frame(0.0, np.zeros((2, 320), np.int16))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"start_db": 5.0}, r"^TurnParams\.start_db = 5\.0 is out of range: must be between -120 and 0 dBFS"),
        ({"stop_db": -30.0}, r"TurnParams\.stop_db = -30\.0 .*start_db \(-40\)"),
        ({"min_speech_ms": -1}, r"TurnParams\.min_speech_ms"),
        ({"silence_ms": 0}, r"TurnParams\.silence_ms = 0 .*between 10 and 60000 ms"),
        ({"silence_ms": float("nan")}, r"TurnParams\.silence_ms"),
        ({"pre_roll_ms": 6000}, r"TurnParams\.pre_roll_ms"),
        ({"max_turn_ms": 50}, r"TurnParams\.max_turn_ms = 50 .*min_speech_ms \+ 1 \(101\)"),
        ({"scorer": "magic"}, r"TurnParams\.scorer = 'magic' is not one of: energy, webrtcvad, silero"),
        ({"webrtcvad_mode": 4}, r"TurnParams\.webrtcvad_mode = 4 must be 0, 1, 2 or 3"),
        ({"webrtcvad_frame_ms": 25}, r"TurnParams\.webrtcvad_frame_ms = 25 must be 10, 20 or 30"),
        ({"silero_threshold": 1.5}, r"TurnParams\.silero_threshold"),
        ({"silero_neg_threshold": 0.6}, r"silero_neg_threshold = 0\.6 .*silero_threshold \(0\.5\)"),
    ],
)
def test_bad_params_raise_one_clear_line(change: dict, match: str) -> None:
    params = TurnParams(**change)
    with pytest.raises(ValueError, match=match) as err:
        params.validate()
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=match):
        TurnDetector(params)


def test_params_dict_and_file_round_trip(tmp_path) -> None:
    p = TurnParams(silence_ms=500, scorer="webrtcvad", webrtcvad_mode=2)
    assert TurnParams.from_dict(p.to_dict()) == p
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"silence_ms": 900, "start_db": -35}))
    assert read_params(path) == TurnParams(silence_ms=900.0, start_db=-35.0)
    with pytest.raises(ValueError, match="unknown TurnParams key 'silence'"):
        TurnParams.from_dict({"silence": 1})
    with pytest.raises(ValueError, match=r"TurnParams\.silence_ms = 'x' has the wrong type"):
        TurnParams.from_dict({"silence_ms": "x"})
    with pytest.raises(ValueError, match=r"TurnParams\.webrtcvad_mode = 2\.5"):
        TurnParams.from_dict({"webrtcvad_mode": 2.5})
    with pytest.raises(ValueError, match=r"TurnParams\.stop_db"):
        TurnParams.from_dict({"stop_db": -10})


SCORERS = ["energy", "webrtcvad"] + (["silero"] if silero_model_path() is not None else [])


@pytest.mark.parametrize("scorer", SCORERS)
def test_each_scorer_ignores_silence_and_finds_a_voiced_burst(scorer: str) -> None:
    params = TurnParams(scorer=scorer)
    assert feed(TurnDetector(params), silence(2.0)) == []
    out = feed(TurnDetector(params), np.concatenate([silence(1.0), vowel(1.0), silence(1.5)]))
    assert [d.kind for d in out] == ["speech_start", "speech_end"]
    assert out[0].speech_t == pytest.approx(1.0, abs=0.04)
    # Energy and webrtcvad hold to the burst's end (webrtcvad a little longer); Silero doubts the
    # synthetic buzz after ~0.5 s, which is fine: a real voice is tested in test_replay.py.
    assert out[0].speech_t < out[1].speech_t <= 2.2
    assert out[1].t == pytest.approx(out[1].speech_t + 0.7, abs=0.011)


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s != "energy"])
def test_model_scorers_reject_steady_noise_that_energy_takes_for_speech(scorer: str) -> None:
    noise = (np.random.default_rng(0).standard_normal(RATE) * 10 ** (-30 / 20)).astype(np.float32)
    x = np.concatenate([silence(0.5), noise, silence(1.0)])
    assert [d.kind for d in feed(TurnDetector(TurnParams()), x)] == ["speech_start", "speech_end"]
    assert feed(TurnDetector(TurnParams(scorer=scorer)), x) == []


def test_silero_rejects_a_pure_tone() -> None:
    if silero_model_path() is None:
        pytest.skip("silero-vad not installed (pip install --no-deps silero-vad)")
    x = np.concatenate([silence(0.5), tone(1.0, -20)])
    assert feed(TurnDetector(TurnParams(scorer="silero")), x) == []


def test_webrtcvad_window_follows_its_frame_ms() -> None:
    det = TurnDetector(TurnParams(scorer="webrtcvad", webrtcvad_frame_ms=30, min_speech_ms=0))
    out = feed(det, np.concatenate([silence(0.3), vowel(0.5)]))
    assert out[0].speech_t == pytest.approx(0.3, abs=0.03)
    assert round(out[0].speech_t * 1000) % 30 == 0


def test_energy_noise_floor_finds_the_answers_at_15_db_snr_where_fixed_thresholds_fail() -> None:
    import soundfile as sf

    from workbench.analysis.replay import detect_file, evaluate
    from workbench.analysis.sweep import read_labels
    from workbench.store import speechset

    rec = REPO / "recordings"
    x, _ = sf.read(rec / "thinking.flac", dtype="float32")
    answers = read_labels(rec / "thinking.labels.txt")
    noisy = speechset.with_noise(x, answers, 15.0, seed=1)
    fixed = evaluate(detect_file(noisy, 16000, TurnParams()), answers, 700)
    assert fixed["merged"] > 0  # -45 dBFS is below this background: a turn never ends, answers merge
    floor = evaluate(detect_file(noisy, 16000, TurnParams(noise_margin_db=13)), answers, 700)
    # Every answer found, none merged or missed, no turn in the noise; the thinking pauses (> 700 ms) split them.
    assert (floor["found"], floor["merged"], floor["missed"], floor["false_turns"]) == (4, 0, 0, 0)


def test_noise_floor_follows_a_louder_background_within_its_span() -> None:
    from workbench.core.scorers import NoiseFloor

    f = NoiseFloor(0.01, span_s=3.0)
    for _ in range(300):
        f.push(-70.0)
    assert f.floor_db == pytest.approx(-70.0)
    for _ in range(100):  # speech for 1 s: the floor stays
        f.push(-20.0)
    assert f.floor_db == pytest.approx(-70.0)
    for _ in range(400):  # the room got louder: after the span the floor is the new background
        f.push(-40.0)
    assert f.floor_db == pytest.approx(-40.0, abs=0.5)


def test_states_and_decision_kinds_are_enums_with_the_recorded_values() -> None:
    det = TurnDetector(TurnParams(min_speech_ms=30))
    assert det.state is TurnState.IDLE
    x = np.concatenate([tone(0.02, -20), tone(0.3, -20), np.zeros(16000, np.float32)])
    seen = []
    for i in range(0, x.shape[0], 160):
        det.tick((i + 160) / RATE)
        ds = det.frame(i / RATE, x[i : i + 160])
        seen.append(det.state)
        for d in ds:
            assert isinstance(d.kind, DecisionKind)
    assert seen[0] is TurnState.CANDIDATE and TurnState.OPEN in seen and seen[-1] is TurnState.IDLE
    assert [k.value for k in DecisionKind] == ["speech_start", "speech_end", "end_score"]
    assert DecisionKind.SPEECH_END == "speech_end" and json.dumps(DecisionKind.SPEECH_END) == '"speech_end"'


def test_misuse_after_finish_raises() -> None:
    det = TurnDetector(TurnParams())
    det.finish(1.0)
    assert det.state is TurnState.FINISHED
    for call in (lambda: det.frame(1.0, np.zeros(320, np.float32)), lambda: det.tick(2.0), lambda: det.finish(2.0),
                 lambda: det.feed(0.0, np.zeros(320, np.float32), FileClock())):
        with pytest.raises(InvalidState, match="finished"):
            call()


def test_feed_refuses_a_stretch_off_the_frame_grid_or_not_continuing() -> None:
    det = TurnDetector(TurnParams())
    with pytest.raises(ValueError, match="frame boundary"):
        det.feed(0.001, np.zeros(320, np.float32), FileClock())
    det.feed(0.0, np.zeros(640, np.float32), FileClock())
    with pytest.raises(ValueError, match="does not continue"):
        det.feed(0.08, np.zeros(320, np.float32), FileClock())


def test_feed_decides_what_a_call_per_frame_decides_whatever_the_stretches() -> None:
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(12):  # bursts, short pauses and long silences, at random lengths and levels
        parts += [tone(rng.uniform(0.05, 1.5), rng.uniform(-50, -15)), np.zeros(int(rng.uniform(0.05, 1.2) * RATE),
                                                                                np.float32)]
    x = np.concatenate(parts)[:-33]
    for p in (TurnParams(), TurnParams(silence_ms=10, min_speech_ms=0), TurnParams(max_turn_ms=700),
              TurnParams(endpointing="dynamic", silence_ms=250), TurnParams(noise_margin_db=6)):
        ref_det = TurnDetector(p)
        ref = feed(ref_det, x, frame=320) + ref_det.finish(x.shape[0] / RATE)
        for stretch in (320, 960, 16000 * 3, 10**7):
            det = TurnDetector(p)
            out = []
            for i in range(0, x.shape[0], stretch):
                out += det.feed(i / RATE, x[i : i + stretch], FileClock())
            out += det.finish(x.shape[0] / RATE)
            assert kinds(out) == kinds(ref), (p, stretch)
            assert [d.pre_roll.shape for d in out if d.pre_roll is not None] == \
                [d.pre_roll.shape for d in ref if d.pre_roll is not None]
