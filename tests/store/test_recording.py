import json

import numpy as np
import pytest
import soundfile as sf

import workbench
from workbench.core.events import Frame, Other, Sent, Server, Vad, Ws, from_dict
from workbench.store.recording import Recorder, RecordingError, load


def make(tmp_path, close=True):
    rec = Recorder(tmp_path / "r", {"name": "t"})
    rec.emit(Frame(t=0.10, pts_s=0.0, n_samples=960, rate=48_000, level_db=-20.0))
    rec.mic(0.10, 0, np.full(960, 1000, np.int16))
    rec.mic(0.50, 960 * 10, np.full(960, 2000, np.int16))  # a gap of 9 frames
    rec.emit(Vad(t=0.2, decision="speech_start", reason="level", media_t=0.1))
    rec.emit(Sent(t=0.21, msg="activity_start", n_bytes=0, seq=1, stage="wire"))
    rec.sent(np.ones(320, np.int16))
    rec.model(np.ones(480, np.int16))
    rec.emit(Server(t=0.9, msg="turn_complete"))
    rec.emit(Ws(t=1.0, what="close", code=1000, reason="bye"))
    if close:
        rec.close(note="ok")
    return rec


def test_round_trip(tmp_path):
    make(tmp_path)
    r = workbench.load(tmp_path / "r")
    assert list(r.events["kind"]) == ["frame", "vad", "send", "server", "ws"]
    assert r.mic.size == 960 * 11  # gap zero-filled by media time
    assert np.all(r.mic[960:960 * 10] == 0) and r.mic[-1] > 0
    assert r.sent.size == 320 and r.model.size == 480
    assert r.meta["ended"] and r.meta["note"] == "ok" and "google-genai" in r.meta["versions"]
    assert r.mic_start_t == pytest.approx(0.10)
    assert not r.cut_short and r.problems == []
    assert r.of_kind("ws")["code"].iloc[0] == 1000


def test_unknown_kinds_and_fields_survive():
    e = from_dict({"t": 1.0, "kind": "brand_new", "x": 3})
    assert isinstance(e, Other) and e.to_dict() == {"t": 1.0, "kind": "brand_new", "x": 3}
    assert isinstance(from_dict({"t": 1.0, "kind": "vad"}), Other)  # missing fields: kept, not crashed


def test_cut_short_recording_loads_what_was_flushed(tmp_path):
    make(tmp_path, close=False)  # never closed: as after SIGKILL
    with open(tmp_path / "r" / "events.jsonl", "a") as fh:
        fh.write('{"t": 2.0, "kind": "fra')  # a line cut mid-write
    r = load(tmp_path / "r")
    assert r.cut_short
    assert len(r.events) == 5
    assert any("truncated last line" in p for p in r.problems)


def test_refuses_to_overwrite(tmp_path):
    make(tmp_path)
    with pytest.raises(RecordingError, match="already holds a recording"):
        Recorder(tmp_path / "r", {})


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "session.json").unlink(), "no session.json"),
    (lambda d: (d / "session.json").write_text("{not json"), "corrupt session.json"),
    (lambda d: (d / "events.jsonl").unlink(), "no events.jsonl"),
])
def test_corrupt_recordings_give_one_line_errors(tmp_path, damage, match):
    make(tmp_path)
    damage(tmp_path / "r")
    with pytest.raises(RecordingError, match=match) as exc:
        load(tmp_path / "r")
    assert "\n" not in str(exc.value)


def test_not_a_directory(tmp_path):
    with pytest.raises(RecordingError, match="not a recording directory"):
        load(tmp_path / "nothing")


def test_garbage_lines_are_reported_not_fatal(tmp_path):
    make(tmp_path)
    p = tmp_path / "r" / "events.jsonl"
    lines = p.read_text().splitlines()
    lines.insert(1, "[1, 2, 3]")
    lines.insert(2, json.dumps({"t": "soon", "kind": "vad"}))
    p.write_text("\n".join(lines) + "\n")
    r = load(tmp_path / "r")
    assert len(r.events) == 5 and len(r.problems) == 2


def test_damaged_flac_keeps_readable_part(tmp_path):
    make(tmp_path)
    sf.write(tmp_path / "long.flac", np.ones(48_000, np.int16) * 100, 48_000, subtype="PCM_16")
    data = (tmp_path / "long.flac").read_bytes()
    (tmp_path / "r" / "mic.flac").write_bytes(data[: len(data) // 2])
    r = load(tmp_path / "r")
    assert r.mic.size > 0


def test_turn_table_follows_resends_across_connections(tmp_path):
    """A turn cut by a reconnect and re-sent is one user turn with two attempts (from the client core's ``resend``
    events' fields); answers stay on their connection; a re-sent greeting labels no user turn."""
    from workbench.analysis.tables import turn_table, user_turns
    from workbench.core.events import Client

    rec = Recorder(tmp_path / "r", {})
    ev = [
        Ws(t=0.1, what="connect", detail="conn 1"),
        Client(t=0.5, action="resend", reason="closed", conn=1, turn=0, attempt=2),  # the greeting: not a user turn
        Vad(t=1.0, decision="speech_start", reason="x", media_t=0.9),
        Sent(t=1.0, msg="activity_start", n_bytes=0, seq=1, stage="wire"),
        Vad(t=3.0, decision="speech_end", reason="silence", media_t=2.3),
        Sent(t=3.0, msg="activity_end", n_bytes=0, seq=2, stage="wire"),
        Server(t=3.5, msg="turn_complete"),
        Vad(t=5.0, decision="speech_start", reason="x", media_t=4.9),
        Sent(t=5.0, msg="activity_start", n_bytes=0, seq=3, stage="wire"),
        Vad(t=6.0, decision="speech_end", reason="silence", media_t=5.3),
        Sent(t=6.0, msg="activity_end", n_bytes=0, seq=4, stage="wire"),  # never answered on conn 1
        Vad(t=8.0, decision="speech_start", reason="x", media_t=7.9),
        Sent(t=8.0, msg="activity_start", n_bytes=0, seq=5, stage="wire"),  # cut by the reconnect
        Ws(t=11.0, what="reconnect"),
        Ws(t=11.1, what="connect", detail="conn 2"),
        Client(t=11.1, action="resend", reason="not_in_handle", conn=2, turn=2, attempt=2),
        Client(t=11.1, action="resend", reason="not_in_handle", conn=2, turn=3, attempt=2),
        Sent(t=11.2, msg="activity_start", n_bytes=0, seq=6, stage="wire"),
        Sent(t=11.3, msg="activity_end", n_bytes=0, seq=7, stage="wire"),
        Sent(t=11.3, msg="activity_start", n_bytes=0, seq=8, stage="wire"),
        Server(t=11.9, msg="turn_complete"),
        Vad(t=12.5, decision="speech_end", reason="silence", media_t=11.8),
        Sent(t=12.5, msg="activity_end", n_bytes=0, seq=9, stage="wire"),
        Server(t=13.0, msg="turn_complete"),
    ]
    for e in ev:
        rec.emit(e)
    rec.close()
    r = load(tmp_path / "r")
    tt = turn_table(r)
    assert list(zip(tt["turn"], tt["attempt"], tt["conn"], strict=True)) == [
        (1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 2), (3, 2, 2)]
    assert list(tt["answered"]) == [True, False, False, True, True]
    assert tt["turn_complete"].iloc[3] == pytest.approx(11.9) and tt["turn_complete"].iloc[4] == pytest.approx(13.0)
    assert user_turns(r)["answered"].all()


def test_audio_written_in_blocks_keeps_every_sample_in_place(tmp_path):
    """Frames are gathered into FLAC blocks; gaps zero-filled, a partial last block written at close."""
    rng = np.random.default_rng(7)
    chunks = [(rng.standard_normal(960) * 3000).astype(np.int16) for _ in range(300)]
    rec = Recorder(tmp_path / "r", {})
    for i, c in enumerate(chunks):
        rec.mic(i * 0.02, i * 960 + (480_000 if i >= 150 else 0), c)  # a 10 s gap half way
        rec.sent(c[::3])
        rec.model(c[::2])
    rec.close()
    r = load(tmp_path / "r")
    want_mic = np.concatenate([*chunks[:150], np.zeros(480_000, np.int16), *chunks[150:]])
    assert np.array_equal(np.round(r.mic * 32768).astype(np.int16), want_mic)
    assert np.array_equal(np.round(r.sent * 32768).astype(np.int16), np.concatenate([c[::3] for c in chunks]))
    assert r.model.size == 300 * 480 and r.meta["samples"]["mic"] == r.mic.size and not r.problems


def test_events_reach_the_os_within_the_flush_interval_and_failures_at_once(tmp_path):
    """Buffered, not a write per event: what a SIGKILL can lose is bounded by EVENT_FLUSH_S."""
    from workbench.core.events import Error
    from workbench.store.recording import EVENT_FLUSH_S

    rec = Recorder(tmp_path / "r", {})
    path = tmp_path / "r" / "events.jsonl"

    def on_disk() -> list[float]:
        return [json.loads(line)["t"] for line in path.read_text().splitlines()]

    def frame(t: float) -> Frame:
        return Frame(t=t, pts_s=t, n_samples=960, rate=48_000, level_db=-30.0)

    rec.emit(frame(1.0))
    assert on_disk() == [1.0]  # the first at once
    for i in range(1, 5):
        rec.emit(frame(1.0 + 0.02 * i))
    rec.emit(frame(1.0 + EVENT_FLUSH_S))
    assert on_disk() == pytest.approx([1.0, 1.02, 1.04, 1.06, 1.08, 1.0 + EVENT_FLUSH_S])
    rec.emit(frame(1.12))
    rec.emit(Error(t=1.125, where="session", message="boom"))  # evidence of a failure: on disk at once
    assert on_disk()[-2:] == [1.12, 1.125]
    rec.close()


def test_numpy_values_are_recorded_as_numbers_and_json_written_lines_still_load(tmp_path):
    rec = Recorder(tmp_path / "r", {})
    rec.emit(Frame(t=0.5, pts_s=np.float64(0.25), n_samples=np.int64(960), rate=48_000, level_db=np.float32(-20.5)))
    rec.close()
    with open(tmp_path / "r" / "events.jsonl", "a") as fh:  # as the json module wrote them before orjson
        fh.write('{"t": 0.6, "kind": "vad", "decision": "speech_end", "reason": "silence", "level_db": NaN}\n')
    r = load(tmp_path / "r")
    frame = r.of_kind("frame").iloc[0]
    assert frame["pts_s"] == 0.25 and frame["n_samples"] == 960 and frame["level_db"] == -20.5
    assert list(r.events["kind"]) == ["frame", "vad"] and not r.problems


# -- raw audio, compressed to FLAC after close: what the tap records with --------------------------------------


def test_raw_audio_is_readable_while_written_and_after_a_kill_and_becomes_flac_after_close(tmp_path):
    x = (np.sin(np.arange(3 * 48_000) / 11) * 9000 + np.random.default_rng(0).normal(0, 300, 3 * 48_000)).astype(
        np.int16)
    rec = Recorder(tmp_path / "r", {"name": "t"}, raw_audio=True)
    for i in range(0, x.size, 960):
        rec.mic(i / 48_000, i, x[i:i + 960])
    rec.sent(np.arange(-500, 500, dtype=np.int16))
    # as a SIGKILL would leave it: every sample written so far, in mic.s16; no FLAC; cut short
    cut = load(tmp_path / "r")
    assert cut.cut_short and not (tmp_path / "r" / "mic.flac").exists()
    assert np.array_equal(np.round(cut.mic * 32768).astype(np.int16), x)
    assert any(p.startswith("mic.s16: raw audio of a recording cut short") for p in cut.problems), cut.problems
    rec.close()
    assert rec.wait_compressed(30)
    assert rec.compress_error is None
    d = tmp_path / "r"
    assert not list(d.glob("*.s16")) and not list(d.glob("*.part"))
    info = sf.info(str(d / "mic.flac"))
    assert info.frames == x.size and info.samplerate == 48_000 and info.channels == 1 and info.format == "FLAC"
    assert np.array_equal(sf.read(d / "mic.flac", dtype="int16")[0], x)
    done = load(d)
    assert done.problems == [] and done.sent.size == 1000 and done.model.size == 0
    assert (d / "model.flac").stat().st_size == 0  # never written: an empty file, read as no audio


def test_an_ended_raw_recording_still_compressing_loads_without_a_problem(tmp_path):
    rec = Recorder(tmp_path / "r", {}, raw_audio=True)
    rec.mic(0.1, 0, np.full(960, 1000, np.int16))
    rec.mic(0.5, 960 * 10, np.full(960, 2000, np.int16))  # a gap: zero-filled, as with FLAC
    for stream in rec._audio.values():  # what close() leaves before its thread has compressed anything
        stream.close()
    rec.closed = True
    rec.meta.update(ended=True, samples={k: s.n_samples for k, s in rec._audio.items()})
    rec._write_meta()
    r = load(tmp_path / "r")
    assert r.problems == [] and r.mic.size == 960 * 11 and r.model.size == 0
    assert np.all(r.mic[960:960 * 10] == 0) and r.mic[-1] == pytest.approx(2000 / 32768)


def test_a_flac_file_renamed_into_place_wins_over_a_raw_file_left_beside_it(tmp_path):
    """A crash between the rename and the unlink leaves both; the FLAC one is whole (it was renamed whole)."""
    rec = Recorder(tmp_path / "r", {}, raw_audio=True)
    rec.mic(0.0, 0, np.full(960, 1000, np.int16))
    rec.close()
    assert rec.wait_compressed(30)
    (tmp_path / "r" / "mic.s16").write_bytes(np.full(5, 7, "<i2").tobytes())
    assert load(tmp_path / "r").mic.size == 960
