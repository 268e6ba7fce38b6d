"""Offline replay through the live TurnDetector, JSON shape, and labelled evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, SPEECH

from workbench.analysis.replay import (
    Turn,
    detect_file,
    detect_frames,
    evaluate,
    format_table,
    replay_path,
    turns_to_json,
)
from workbench.core.params import TurnParams

RATE = 16000


def burst(seconds: float, db: float = -20.0) -> np.ndarray:
    n = round(seconds * RATE)
    return (10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 400 * np.arange(n) / RATE)).astype(np.float32)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def three_answers() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three answers of three 0.5 s phrases with 0.3 s pauses inside, 2 s between answers."""
    parts = [gap(1.0)]
    truth = []
    pos = 1.0
    for a in range(3):
        if a:
            parts.append(gap(2.0))
            pos += 2.0
        start = pos
        for p in range(3):
            if p:
                parts.append(gap(0.3))
                pos += 0.3
            parts.append(burst(0.5))
            pos += 0.5
        truth.append((round(start, 6), round(pos, 6)))
    parts.append(gap(1.5))
    return np.concatenate(parts), truth


def test_detect_file_finds_three_answers_at_known_boundaries() -> None:
    x, truth = three_answers()
    assert truth == [(1.0, 3.1), (5.1, 7.2), (9.2, 11.3)]
    turns = detect_file(x, RATE, TurnParams())
    assert len(turns) == 3
    for turn, (s, e) in zip(turns, truth, strict=True):
        assert turn.speech_start == pytest.approx(s)
        assert turn.activity_start == pytest.approx(s + 0.1)  # min_speech_ms
        assert turn.speech_end == pytest.approx(e)
        assert turn.activity_end == pytest.approx(e + 0.7)  # silence_ms, on the 10 ms tick grid
        assert turn.end_reason == "silence"
    r = evaluate(turns, truth, 700)
    assert (r["found"], r["split"], r["merged"], r["missed"], r["false_turns"]) == (3, 0, 0, 0, 0)
    assert (r["whole"], r["split_only"], r["merged_answers"]) == (3, 0, 0)
    assert r["lateness_ms"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_detect_file_short_silence_splits_and_long_silence_merges() -> None:
    x, truth = three_answers()
    split = evaluate(detect_file(x, RATE, TurnParams(silence_ms=200)), truth, 200)
    assert split["split"] == 3 and split["merged"] == 0
    merged = evaluate(detect_file(x, RATE, TurnParams(silence_ms=2500)), truth, 2500)
    assert merged["merged"] == 1 and merged["found"] == 3
    # one outcome per answer: a merged answer is not a whole one, however "found" reads
    assert (merged["whole"], merged["split_only"], merged["merged_answers"], merged["missed"]) == (0, 0, 3, 0)
    assert (split["whole"], split["split_only"], split["merged_answers"]) == (0, 3, 0)
    assert merged["onset_unmerged_ms"] == [] and len(split["onset_unmerged_ms"]) == 3


def test_detect_file_resamples_48k_stereo_and_int16() -> None:
    import soxr

    x, truth = three_answers()
    x48 = soxr.resample(x, RATE, 48000).astype(np.float32)
    stereo = np.stack([x48, x48], axis=1)
    turns = detect_file((stereo * 32767).astype(np.int16), 48000, TurnParams())
    assert [round(t.speech_start, 2) for t in turns] == [s for s, _ in truth]


def test_open_turn_at_end_of_audio_and_max_turn() -> None:
    turns = detect_file(np.concatenate([gap(0.5), burst(1.0)]), RATE, TurnParams())
    assert [(t.end_reason, round(t.activity_end, 6)) for t in turns] == [("end_of_audio", 1.5)]
    turns = detect_file(burst(2.5), RATE, TurnParams(max_turn_ms=1000))
    assert [t.end_reason for t in turns] == ["max_turn", "max_turn", "end_of_audio"]


def test_detect_frames_gap_is_silence_on_the_clock() -> None:
    """Frames stop after the speech (Failure B): ticks through the gap end the turn exactly."""
    speech = burst(1.0)
    frames = [(1.0 + (i + 320) / RATE, speech[i : i + 320]) for i in range(0, speech.shape[0], 320)]
    turns = detect_frames(frames, TurnParams(), end_t=10.0)
    assert len(turns) == 1
    assert turns[0].speech_start == pytest.approx(1.0)
    assert turns[0].activity_end == pytest.approx(2.7)
    assert turns[0].end_reason == "silence"
    # Without an end time the replay stops at the last frame and the turn closes as end_of_audio.
    assert detect_frames(frames, TurnParams())[0].end_reason == "end_of_audio"


def test_detect_frames_with_media_times_ignores_stale_jitter_frames() -> None:
    speech = burst(1.0)
    chunks = [(1.0 + i / RATE, speech[i : i + 320]) for i in range(0, speech.shape[0], 320)]
    on_time = [(m + 0.1, m, s) for m, s in chunks[:-4]]  # 80 ms steady latency ...
    stale = [(5.0, m, s) for m, s in chunks[-4:]]  # ... and the last 80 ms held until 5.0 s
    resumed = [(5.0 + 0.02 * k, 4.9 + 0.02 * k, np.zeros(320, np.float32)) for k in range(10)]
    turns = detect_frames(on_time + stale + resumed, TurnParams(), end_t=6.0)
    assert len(turns) == 1
    assert turns[0].speech_end == pytest.approx(1.92)
    assert turns[0].activity_end == pytest.approx(2.62)
    with pytest.raises(ValueError, match="t_arrival"):
        detect_frames([(1.0,)], TurnParams())


def test_turns_to_json_shape_and_table() -> None:
    x, _ = three_answers()
    params = TurnParams(silence_ms=600)
    turns = detect_file(x, RATE, params)
    doc = json.loads(json.dumps(turns_to_json(params, turns)))
    assert set(doc) == {"params", "turns"}
    assert TurnParams.from_dict(doc["params"]) == params
    assert len(doc["turns"]) == 3
    for t in doc["turns"]:
        assert {"speech_start", "activity_start", "activity_end", "end_reason"} <= set(t)
        assert t["end_reason"] in ("silence", "max_turn", "end_of_audio")
        assert all(isinstance(t[k], float) for k in ("speech_start", "activity_start", "activity_end"))
    table = format_table(turns)
    assert table.count("silence") == 3 and "speech_start" in table
    assert "(no turns)" in format_table([])


def T(s: float, e: float, reason: str = "silence", silence_s: float = 0.7) -> Turn:
    return Turn(speech_start=s, activity_start=s + 0.1, activity_end=e + silence_s, end_reason=reason,
                speech_end=e)


def test_evaluate_counts_split_merged_missed_false_and_lateness() -> None:
    truth = [(1.0, 2.0), (4.0, 5.0), (7.0, 8.0), (10.0, 11.0), (13.0, 14.0)]
    turns = [
        T(1.0, 1.4), T(1.6, 2.05),  # answer 1 split in two; the second ends 50 ms late
        T(4.0, 8.0),  # answers 2 and 3 merged
        T(10.0, 11.0, reason="max_turn"),  # found, but no lateness: not ended by silence
        T(16.0, 16.5),  # false turn; answer 5 missed
    ]
    r = evaluate(turns, truth, 700)
    assert (r["answers"], r["turns"]) == (5, 5)
    assert (r["found"], r["split"], r["merged"], r["missed"], r["false_turns"]) == (4, 1, 1, 1, 1)
    assert r["lateness_ms"] == pytest.approx([50.0])
    assert r["lateness_median_ms"] == pytest.approx(50.0)
    assert r["onset_ms"] == pytest.approx([100.0, 100.0, -2900.0, 100.0])  # answer 3 inside a merged turn
    empty = evaluate([], truth, 700)
    assert empty["missed"] == 5 and empty["lateness_median_ms"] is None


@pytest.mark.parametrize("name", ["silero_test_16k.wav", "aepyx_8k.wav"])
def test_real_speech_files(name: str) -> None:
    path = SPEECH / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    x, rate = sf.read(path, dtype="float32")
    x = x[: 30 * rate]  # 30 s is plenty and keeps the suite fast
    for scorer in ("energy", "webrtcvad"):
        turns = detect_file(x, rate, TurnParams(scorer=scorer))
        # aepyx is near-continuous reading: one long turn is a fair answer at 700 ms.
        assert 1 <= len(turns) <= 15, (scorer, format_table(turns))
        for a, b in zip(turns, turns[1:], strict=False):
            assert a.activity_end <= b.activity_start
        for t in turns:
            assert t.speech_start < t.activity_start < t.activity_end
            assert t.speech_end <= t.activity_end


def test_replay_path_on_the_bundled_candidate_recording() -> None:
    audio = REPO / "recordings" / "candidate.flac"
    labels = REPO / "recordings" / "candidate.labels.txt"
    if not (audio.exists() and labels.exists()):
        pytest.skip("bundled candidate audio not present")
    rows = (ln.split("\t") for ln in labels.read_text().splitlines() if ln.strip())
    truth = [(float(s), float(e)) for s, e, *_ in rows]
    report = replay_path(audio, TurnParams())
    r = evaluate(report.turns, truth, 700)
    assert (r["found"], r["split"], r["merged"], r["false_turns"]) == (len(truth), 0, 0, 0)
    assert report.to_json()["turns"] and "file replay" in report.table()


def test_a_file_is_streamed_block_by_block_with_the_same_samples_and_turns(tmp_path: Path) -> None:
    """44.1 kHz stereo on disk: the streamed blocks are ``load_mono``'s samples, so the turns are the same."""
    from workbench.analysis.replay import detect_path
    from workbench.store.audiofile import load_mono, mono_blocks

    x, _ = three_answers()
    x44 = soxr_resample(x, RATE, 44100)
    path = tmp_path / "answers.flac"
    sf.write(path, np.stack([x44, 0.5 * x44], axis=1), 44100, subtype="PCM_24")
    whole = load_mono(path, RATE)
    blocks = list(mono_blocks(path, RATE, block_s=0.37))
    assert len(blocks) > 10
    assert np.array_equal(np.concatenate(blocks), whole)
    assert detect_path(path, TurnParams()) == detect_file(whole, RATE, TurnParams())
    sf.write(tmp_path / "a16.wav", x44, 44100, subtype="PCM_16")  # the int16 decoding path
    assert np.array_equal(np.concatenate(list(mono_blocks(tmp_path / "a16.wav", RATE, block_s=0.5))),
                          load_mono(tmp_path / "a16.wav", RATE))


def test_streamed_file_errors_are_the_same_one_liners(tmp_path: Path) -> None:
    from workbench.store.audiofile import AudioInputError, mono_blocks

    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    nan = np.zeros(16000, np.float32)
    nan[9000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    for name, match in (("missing.wav", "no such file"), ("empty.wav", "empty file"),
                        ("junk.wav", "not readable as audio"), ("nan.wav", "NaN or infinite")):
        with pytest.raises(AudioInputError, match=match):
            list(mono_blocks(tmp_path / name, RATE, block_s=0.25))


def soxr_resample(x: np.ndarray, a: int, b: int) -> np.ndarray:
    import soxr

    return soxr.resample(x, a, b, quality="HQ").astype(np.float32)
