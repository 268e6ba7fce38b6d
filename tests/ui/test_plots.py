"""Timeline figure: panels, markers at the event times, gaps, zoom, envelope, CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from conftest import REPO  # noqa: E402

from workbench.analysis.replay import Turn  # noqa: E402
from workbench.core.events import (  # noqa: E402
    Client,
    Error,
    Frame,
    FrameGap,
    LoopLag,
    Sent,
    Server,
    SessionMark,
    Vad,
    Watchdog,
    Ws,
)
from workbench.core.params import TurnParams  # noqa: E402
from workbench.store.recording import Recorder, Recording, RecordingError, load  # noqa: E402
from workbench.ui.plots import MAX_WAVE_POINTS, TimelinePlot, envelope, level_db, register, timeline  # noqa: E402

ANSWERS = [(1.0, 6.7), (9.5, 15.9), (18.7, 25.4)]  # (ActivityStart-ish, ActivityEnd-ish) session seconds
GAP = (6.0, 7.5)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """A recording made with Recorder: candidate audio as mic (with a frame gap) and synthetic events."""
    out = tmp_path_factory.mktemp("rec") / "synthetic"
    x, _ = sf.read(REPO / "recordings" / "candidate.flac", dtype="int16")
    r = Recorder(out, {"name": "synthetic", "params": TurnParams(start_db=-38, stop_db=-44).to_dict()})
    r.emit(SessionMark(0.0, "start"))
    for i in range(0, len(x), 960):
        t = 0.5 + i / 48000
        if not GAP[0] < t < GAP[1]:
            r.mic(t, i, x[i : i + 960])
            r.emit(Frame(t + 0.02, pts_s=i / 48000, n_samples=960, rate=48000, level_db=-30.0))
    r.emit(FrameGap(GAP[1], start_t=GAP[0], gap_s=GAP[1] - GAP[0], resumed=True))
    for k, (a, b) in enumerate(ANSWERS):
        r.emit(Vad(a, "speech_start", "level", media_t=a - 0.1, level_db=-30.0))
        r.emit(Sent(a + 0.01, "activity_start", 0, seq=1, stage="app"))
        r.emit(Sent(a + 0.02, "activity_start", 0, seq=1, stage="wire"))
        for tt in np.arange(a, b, 0.1):
            r.emit(Sent(float(tt) + 0.03, "audio", 3200, seq=2, stage="wire", n_samples=1600))
        r.emit(Vad(b, "speech_end", "silence", media_t=b - 0.7, level_db=-60.0))
        r.emit(Sent(b + 0.02, "activity_end", 0, seq=3, stage="wire"))
        for j in range(10):
            r.emit(Server(b + 0.5 + j * 0.05, "model_audio", 4800, n_samples=2400))
        r.emit(Server(b + 0.6, "output_transcription", text=f"reply {k}"))
        r.emit(Server(b + 1.2, "turn_complete"))
    for tt in range(0, 26, 5):
        r.emit(Ws(tt + 0.2, "ping"))
        r.emit(Ws(tt + 0.25, "pong", latency_ms=50))
        r.emit(LoopLag(tt + 0.3, lag_ms=2.0 + tt))
    r.emit(Server(12.0, "tool_call", detail="get_time"))
    r.emit(Server(26.0, "go_away", detail="10s"))
    r.emit(Watchdog(20.0, after_s=5.0, action="log"))
    r.emit(Client(17.0, action="interrupted", reason="barge_in", conn=1, turn=2, attempt=1))
    r.emit(Client(20.0, action="reconnect", reason="watchdog", conn=2, turn=3))
    r.emit(Error(27.0, where="receive", message="ConnectionClosed 1011"))
    r.emit(Ws(27.0, "close", code=1011, reason="keepalive ping timeout"))
    r.close()
    return load(out)


def _line(ax, label: str):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert lines, f"no {label!r} in {[ln.get_label() for ln in ax.get_lines()]}"
    return lines[0]


def test_timeline_has_six_panels_sharing_x(rec: Recording) -> None:
    p = TimelinePlot(rec)
    assert list(p.axes) == ["wave", "level", "turns", "sent", "server", "ws"]
    wave = p.axes["wave"]
    for ax in p.axes.values():
        assert ax.get_shared_x_axes().joined(wave, ax)
    lo, hi = wave.get_xlim()
    assert lo < 0.5 and hi >= 27.0  # covers mic and every event
    assert p.axes["ws"].get_xlabel() == "session time (s)"
    assert p.axes["level"].get_ylabel().startswith("level")


def test_markers_sit_at_event_times(rec: Recording) -> None:
    p = TimelinePlot(rec)
    sent = p.axes["sent"]
    # wire stage preferred: the ActivityStart markers are at the wire times (+0.02), not app (+0.01)
    assert np.allclose(_line(sent, "ActivityStart").get_xdata(), [a + 0.02 for a, _ in ANSWERS])
    assert np.allclose(_line(sent, "ActivityEnd").get_xdata(), [b + 0.02 for _, b in ANSWERS])
    assert sent.get_ylabel() == "sent\n(wire)"
    server = p.axes["server"]
    assert np.allclose(_line(server, "turn_complete").get_xdata(), [b + 1.2 for _, b in ANSWERS])
    assert np.allclose(_line(server, "error").get_xdata(), [27.0])
    assert np.allclose(_line(p.axes["ws"], "close").get_xdata(), [27.0])
    texts = [t.get_text() for t in p.axes["ws"].texts]
    assert any("1011" in t and "keepalive" in t for t in texts)
    # thresholds come from the recording's params
    levels = sorted(ln.get_ydata()[0] for ln in p.axes["level"].get_lines() if ln.get_label().startswith(("st",)))
    assert levels == [-44, -38]


def test_client_decisions_on_the_timeline(rec: Recording) -> None:
    server = TimelinePlot(rec).axes["server"]
    assert np.allclose(_line(server, "turn interrupted (barge-in)").get_xdata(), [17.0])
    assert np.allclose(_line(server, "client reconnect").get_xdata(), [20.0])
    texts = [t.get_text() for t in server.texts]
    assert "turn 2 interrupted" in texts and "reconnect watchdog" in texts


def test_frame_gap_is_shaded_and_live_turns_drawn(rec: Recording) -> None:
    p = TimelinePlot(rec)
    ax = p.axes["turns"]
    spans = [patch.get_x() for patch in ax.patches]
    assert any(abs(x - GAP[0]) < 1e-9 for x in spans)
    bars = [c for c in ax.collections if c.get_label() == "turn open (ActivityStart..End decided)"]
    starts = sorted(path.vertices[:, 0].min() for path in bars[0].get_paths())
    assert np.allclose(starts, [a for a, _ in ANSWERS])


def test_model_audio_spans_merge_chunks(rec: Recording) -> None:
    p = TimelinePlot(rec)
    bars = [c for c in p.axes["server"].collections if c.get_label().startswith("model audio")][0]
    assert len(bars.get_paths()) == 3  # ten chunks per answer joined into one span each
    x0 = sorted(path.vertices[:, 0].min() for path in bars.get_paths())
    assert np.allclose(x0, [b + 0.5 for _, b in ANSWERS])


def test_zoom_and_replay_turns(rec: Recording) -> None:
    turns = [Turn(speech_start=9.0, activity_start=9.1, activity_end=15.0, end_reason="silence", speech_end=14.3)]
    p = TimelinePlot(rec, t_range=(8.0, 17.0), replay_turns=turns)
    assert p.axes["ws"].get_xlim() == (8.0, 17.0)
    ends = _line(p.axes["turns"], "ActivityEnd (replay)")
    assert np.allclose(ends.get_xdata(), [15.0 + rec.mic_start_t])  # media time shifted onto the session clock
    # only events inside the view are drawn; turn numbers stay global
    assert [t.get_text() for t in p.axes["sent"].texts] == ["start 2", "end 2"]
    p.set_turns([])
    assert not [ln for ln in p.axes["turns"].get_lines() if ln.get_label() == "ActivityEnd (replay)"]
    with pytest.raises(ValueError, match="FROM < TO"):
        TimelinePlot(rec, t_range=(5, 5))


def test_envelope_bounds_long_audio_and_level_units() -> None:
    x = np.sin(2 * np.pi * 500 * np.arange(48000 * 300) / 48000).astype(np.float32)
    t, mn, mx = envelope(x, 48000, 2.0)
    assert t.size <= MAX_WAVE_POINTS + 1 and t[0] >= 2.0 and mn.min() < -0.99 and mx.max() > 0.99
    _, db = level_db(x[:48000], 48000)
    assert np.allclose(db, -3.01, atol=0.05)  # full-scale sine is -3 dBFS
    fig = timeline(None, mic=x, mic_rate=48000)
    assert len(fig.axes) == 3


def test_cli_plot_writes_png_and_reports_errors(rec: Recording, tmp_path: Path) -> None:
    ap = argparse.ArgumentParser(prog="workbench")
    register(ap.add_subparsers())
    out = tmp_path / "t.png"
    args = ap.parse_args(["plot", str(rec.path), "-o", str(out), "--from", "5", "--to", "12", "--replay"])
    assert args.func(args) == 0  # --replay goes through replay_recording: the fixture has frame events
    assert out.read_bytes()[:4] == b"\x89PNG"
    from workbench.analysis.replay import replay_recording

    turns = replay_recording(rec, TurnParams.from_dict(rec.meta["params"]))
    p = TimelinePlot(rec, replay_turns=turns, replay_offset_s=0.0)
    ends = _line(p.axes["turns"], "ActivityEnd (replay)").get_xdata()
    assert len(ends) >= 3 and np.allclose(ends, [t.activity_end for t in turns])
    for argv, exc, msg in (
        (["plot", str(rec.path), "-o", str(tmp_path / "x.png"), "--from", "9", "--to", "3"], ValueError, "before"),
        (["plot", str(tmp_path / "none"), "-o", str(tmp_path / "x.png")], RecordingError, "no such"),
        (["plot", str(rec.path), "-o", str(tmp_path / "x.nope")], ValueError, "x.nope"),
        (["plot", str(rec.path), "-o", str(tmp_path / "no" / "x.png")], ValueError, "does not exist"),
    ):
        a = ap.parse_args(argv)
        with pytest.raises(exc, match=msg) as info:
            a.func(a)
        assert "\n" not in str(info.value)


def test_empty_rows_are_left_out(rec: Recording) -> None:
    p = TimelinePlot(rec)
    rows = {name: [t.get_text() for t in p.axes[name].get_yticklabels()] for name in ("turns", "sent", "ws")}
    assert rows["turns"] == ["speech (live VAD)", "turn open (live)"]  # no replay asked for: no replay rows
    assert "other" not in rows["sent"] and "audio" in rows["sent"]  # nothing but audio and activity was sent
    assert rows["ws"] == ["ping", "pong", "close / connect"]
    # the markers moved with their rows: ActivityStart sits on the activity row's new position
    assert set(_line(p.axes["sent"], "ActivityStart").get_ydata()) == {p.rows["sent"]["activity"]}
    with pytest.raises(ValueError, match="without replay rows"):
        p.set_turns([])


def test_gap_kinds_dtx_is_quiet_and_stall_is_marked(rec: Recording) -> None:
    # the fixture's gap: media time jumps by the gap (the sender was silent), so it is an expected DTX pause
    p = TimelinePlot(rec)
    labels = [a.get_label() for a in p.axes["turns"].patches]
    assert any("DTX" in lab for lab in labels) and not any("stalled" in lab for lab in labels)
    import pandas as pd

    frames = pd.DataFrame({"t": [1.0, 1.02, 2.0, 2.02, 2.04], "pts_s": [0.0, 0.02, 0.04, 0.06, 0.08]})
    assert TimelinePlot._gap_kind(frames, 1.02, 2.0) == "stall"  # media time went on from where it stopped
    frames["pts_s"] = [0.0, 0.02, 0.04, 1.02, 1.04]
    assert TimelinePlot._gap_kind(frames, 1.02, 2.0) == "dtx"


def test_labels_never_overlap_nor_leave_their_panel(tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = Recorder(tmp_path / "dense", {"name": "dense"})
    r.emit(SessionMark(0.0, "start"))
    for k in range(40):  # an utterance every 0.5 s, each far wider than 0.5 s of plot: they must not collide
        r.emit(Server(0.05 + 0.5 * k, "output_transcription", text=f"utterance number {k} with quite a few words"))
        r.emit(Server(0.3 + 0.5 * k, "input_transcription", text=f"[user audio {k}.0 s]"))
    r.emit(Ws(19.95, "close_frame_received", code=1000, reason="bye"))
    r.emit(Ws(20.0, "close"))
    r.close()
    p = TimelinePlot(load(tmp_path / "dense"))
    canvas = FigureCanvasAgg(p.fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for name in ("server", "ws"):
        ax = p.axes[name]
        inside = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert boxes, name
        for i, a in enumerate(boxes):
            assert inside.x0 - 0.5 <= a.x0 and a.x1 <= inside.x1 + 0.5, (name, ax.texts[i].get_text())
            assert inside.y0 - 0.5 <= a.y0 and a.y1 <= inside.y1 + 0.5, (name, ax.texts[i].get_text())
            for b in boxes[i + 1:]:
                assert not a.overlaps(b) or a.intersection(a, b).width < 0.5, name
    texts = [t.get_text() for t in p.axes["server"].texts]
    assert any(t.endswith("\u2026") for t in texts)  # crowded: cut with a marker
    assert [t.get_text() for t in p.axes["ws"].texts] == ["close 1000 bye"]  # one label for one close


def test_transcript_fragments_join_into_utterances() -> None:
    import pandas as pd

    from workbench.ui.plots import _utterances

    tr = pd.DataFrame({"t": [1.0, 1.1, 1.2, 5.0], "msg": ["output_transcription"] * 4,
                       "text": ["Could ", "you", "help?", "Next."]})
    assert _utterances(tr) == ([1.0, 5.0], ["Could you help?", "Next."])
