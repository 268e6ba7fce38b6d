"""Offline replay through the same TurnDetector the live bridge runs, plus labelled evaluation.

A file replay is the detector on a ``FileClock``: 20 ms frames arriving at their media times, the clock ticking
every 10 ms between them, so what it decides is what the bridge would have decided on a clean link; the detector
takes the file in long stretches (``TurnDetector.feed``) and decides exactly what a call per frame would.  A file
on disk is streamed (decoded in blocks, resampled by streaming soxr, fed block by block), so memory stays flat in
the audio's length.  A frame replay uses recorded arrival times, so a gap in a recording is silence on the clock
exactly as it was live.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE, SENT_RATE
from workbench.core.turns import Decision, DecisionKind, FileClock, TurnDetector
from workbench.store.models import make_end_model

RATE = SENT_RATE  # the detector runs on what the bridge sends
FEED_S = 30.0  # a file is fed to the detector in stretches of this length (bounded scratch memory)


@dataclass(frozen=True)
class Turn:
    """One detected turn; seconds from the start of the audio (or on the session clock for frames)."""

    speech_start: float  # media time speech began
    activity_start: float  # when ActivityStart would be sent
    activity_end: float  # when ActivityEnd would be sent
    end_reason: str  # "silence" | "max_turn" | "end_of_audio"
    speech_end: float  # media time of the last speech before ActivityEnd


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz; soundfile's (n, channels) layout is averaged to mono."""
    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise ValueError(f"samples must be 1-D or (n, channels), got shape {x.shape}")
    if rate != RATE:
        import soxr

        x = soxr.resample(x, rate, RATE, quality="HQ").astype(np.float32, copy=False)
    return x


def _turns(decisions: Iterable[Decision]) -> list[Turn]:
    turns: list[Turn] = []
    start: Decision | None = None
    for d in decisions:
        if d.kind == DecisionKind.SPEECH_START:
            start = d
        elif d.kind == DecisionKind.SPEECH_END and start is not None:
            turns.append(Turn(speech_start=start.speech_t, activity_start=start.t, activity_end=d.t,
                              end_reason=d.reason, speech_end=d.speech_t))
            start = None
    return turns


def _run(det: TurnDetector, frames: Iterable[tuple[float, float, np.ndarray]], tick_s: float,
         end_t: float | None) -> list[Decision]:
    """Tick the clock on a ``tick_s`` grid between (arrival, media t, samples) frames, in arrival order."""
    out: list[Decision] = []
    k = 0
    last = 0.0
    for arrival, media_t, samples in frames:
        while k * tick_s < arrival:
            out += det.tick(k * tick_s)
            k += 1
        out += det.tick(arrival)  # the clock has reached the arrival before the frame is handled
        out += det.frame(media_t, samples)
        last = arrival
    end = last if end_t is None else end_t
    while k * tick_s < end:
        out += det.tick(k * tick_s)
        k += 1
    out += det.finish(end)
    return out


def detect_file(samples: np.ndarray, rate: int, params: TurnParams, frame_ms: float = 20,
                tick_ms: float = 10, *, end_model: Any = None, decisions: list[Decision] | None = None) -> list[Turn]:
    """Turns in a whole recording, as the live detector would see it with frames arriving on time.

    ``end_model``: an end-of-turn model object to use instead of the one ``params.end_model`` names
    (e.g. ``endturn.MemoEndModel``, which scores identical audio once); ``decisions``: a list that
    receives every decision, ``end_score`` ones included.
    """
    x = to_mono_16k(samples, rate)
    return detect_blocks([x], params, frame_ms, tick_ms, end_model=end_model, decisions=decisions)


def detect_blocks(blocks: Iterable[np.ndarray], params: TurnParams, frame_ms: float = 20, tick_ms: float = 10, *,
                  end_model: Any = None, decisions: list[Decision] | None = None) -> list[Turn]:
    """``detect_file`` over 16 kHz mono float32 audio given in consecutive blocks of any length (a stream).

    The blocks are re-cut into stretches of whole frames, so the decisions do not depend on how the audio was
    blocked; only a stretch of audio and the detector's own state are held at a time.
    """
    n = max(1, round(RATE * frame_ms / 1000))
    stretch = max(1, round(FEED_S * RATE / n)) * n
    if end_model is None:
        end_model = make_end_model(params.end_model)
    det = TurnDetector(params, RATE, end_model=end_model)
    clock = FileClock(frame_n=n, tick_s=tick_ms / 1000)
    out: list[Decision] = []
    pending: list[np.ndarray] = []
    held = 0
    done = 0  # samples fed so far

    def feed(x: np.ndarray) -> None:
        nonlocal done
        for i in range(0, x.shape[0], stretch):
            part = x[i : i + stretch]
            out.extend(det.feed(done / RATE, part, clock))
            done += part.shape[0]

    for block in blocks:
        b = np.asarray(block, dtype=np.float32).reshape(-1)
        if not b.size:
            continue
        pending.append(b)
        held += b.shape[0]
        if held >= stretch:
            x = np.concatenate(pending) if len(pending) > 1 else pending[0]
            whole = (x.shape[0] // n) * n
            feed(x[:whole])
            pending, held = ([x[whole:]], x.shape[0] - whole) if whole < x.shape[0] else ([], 0)
    if held:
        feed(np.concatenate(pending) if len(pending) > 1 else pending[0])
    out += det.finish(done / RATE)
    if decisions is not None:
        decisions.extend(out)
    return _turns(out)


def detect_path(path: str | Path, params: TurnParams) -> list[Turn]:
    """``detect_file`` on an audio file (any rate, channels), streamed: decoded and resampled block by block."""
    from workbench.store.audiofile import mono_blocks

    return detect_blocks(mono_blocks(path, RATE), params)


def detect_frames(frames: Iterable[tuple[Any, ...]], params: TurnParams, tick_ms: float = 10,
                  end_t: float | None = None) -> list[Turn]:
    """Replay recorded frames with their arrival times and gaps.

    Each item is ``(t_arrival, samples16k)`` or ``(t_arrival, t_media, samples16k)``.  With two
    fields the media time is taken as arrival minus the frame's duration (no jitter information);
    pass media times to replay stale jitter-buffer frames faithfully.  ``end_t`` (default: the
    last arrival) is when the session ended; the clock ticks up to it, then any open turn closes.
    """

    def norm() -> Iterator[tuple[float, float, np.ndarray]]:
        for item in frames:
            if len(item) == 2:
                arrival, samples = item
                samples = np.asarray(samples)
                yield float(arrival), float(arrival) - samples.shape[0] / RATE, samples
            elif len(item) == 3:
                arrival, media_t, samples = item
                yield float(arrival), float(media_t), np.asarray(samples)
            else:
                raise ValueError("frames must be (t_arrival, samples) or (t_arrival, t_media, samples)")

    return _turns(_run(TurnDetector(params, RATE, end_model=make_end_model(params.end_model)), norm(), tick_ms / 1000,
                       end_t))


def turns_to_json(params: TurnParams, turns: list[Turn]) -> dict[str, Any]:
    """The replay result as JSON: the params used and one object per turn (seconds, 6 decimals)."""
    return {
        "params": params.to_dict(),
        "turns": [
            {
                "speech_start": round(t.speech_start, 6),
                "activity_start": round(t.activity_start, 6),
                "activity_end": round(t.activity_end, 6),
                "end_reason": t.end_reason,
                "speech_end": round(t.speech_end, 6),
            }
            for t in turns
        ],
    }


def format_table(turns: list[Turn]) -> str:
    """A fixed-width text table of turns for terminals and notebooks."""
    head = (f"{'#':>3} {'speech_start':>12} {'act_start':>10} {'speech_end':>10} {'act_end':>10} "
            f"{'len_s':>7}  end")
    lines = [head, "-" * len(head)]
    for i, t in enumerate(turns, 1):
        lines.append(f"{i:>3} {t.speech_start:>12.3f} {t.activity_start:>10.3f} {t.speech_end:>10.3f} "
                     f"{t.activity_end:>10.3f} {t.activity_end - t.activity_start:>7.2f}  {t.end_reason}")
    if not turns:
        lines.append("(no turns)")
    return "\n".join(lines)


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def evaluate(turns: list[Turn], truth: list[tuple[float, float]], silence_ms: float) -> dict[str, Any]:
    """Score turns against labelled answers (start, end seconds).

    A turn covers an answer when its detected speech span [speech_start, speech_end] overlaps it.
    found: answers covered at least once; split: answers covered by more than one turn; merged:
    turns covering more than one answer; missed: answers no turn covers; false_turns: turns
    covering no answer.  lateness_ms: for each answer whose last covering turn covers only it and
    ended on silence, ActivityEnd minus the true speech end minus ``silence_ms`` (0 = ideal;
    negative = ActivityEnd before the speaker's true end plus the window, e.g. a faint tail missed).
    onset_ms: ActivityStart minus the true speech start for the first turn covering each answer.

    Per answer, one outcome each (they add up to ``answers``), because a turn that swallows three answers covers
    all three and so "found" alone reads well when it is not: whole: one turn covers the answer and nothing else;
    split_only: more than one turn covers it and none of them covers another answer; merged_answers: a turn that
    covers it also covers another answer; missed.  onset_unmerged_ms: onset_ms of the answers not merged (a
    merged answer's onset is the turn's start, often an earlier answer's).
    """
    spans = [(min(t.speech_start, t.speech_end), max(t.speech_end, t.speech_start + 1e-6)) for t in turns]
    covers = [[j for j, (a0, a1) in enumerate(truth) if _overlaps(s0, s1, a0, a1)] for s0, s1 in spans]
    by_answer: list[list[int]] = [[] for _ in truth]
    for i, js in enumerate(covers):
        for j in js:
            by_answer[j].append(i)
    lateness: list[float] = []
    onset: list[float] = []
    onset_unmerged: list[float] = []
    merged_answers = 0
    for j, (a0, a1) in enumerate(truth):
        idx = by_answer[j]
        if not idx:
            continue
        onset.append((turns[idx[0]].activity_start - a0) * 1000)
        if any(len(covers[i]) > 1 for i in idx):
            merged_answers += 1
        else:
            onset_unmerged.append(onset[-1])
        last = turns[idx[-1]]
        if len(covers[idx[-1]]) == 1 and last.end_reason == "silence":
            lateness.append((last.activity_end - a1) * 1000 - silence_ms)
    lat = np.asarray(lateness)
    return {
        "answers": len(truth),
        "turns": len(turns),
        "found": sum(1 for idx in by_answer if idx),
        "split": sum(1 for idx in by_answer if len(idx) > 1),
        "merged": sum(1 for js in covers if len(js) > 1),
        "missed": sum(1 for idx in by_answer if not idx),
        "whole": sum(1 for idx in by_answer if len(idx) == 1 and len(covers[idx[0]]) == 1),
        "split_only": sum(1 for idx in by_answer if len(idx) > 1 and all(len(covers[i]) == 1 for i in idx)),
        "merged_answers": merged_answers,
        "onset_unmerged_ms": onset_unmerged,
        "false_turns": sum(1 for js in covers if not js),
        "lateness_ms": lateness,
        "lateness_median_ms": float(np.median(lat)) if lat.size else None,
        "lateness_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "onset_ms": onset,
    }


@dataclass(frozen=True)
class ReplayReport:
    """What ``workbench vad`` prints: the turns found in one source with one parameter set."""

    source: str
    mode: str  # "file" (media-time frames) | "recording" (recorded arrival times and gaps)
    params: TurnParams
    turns: list[Turn]

    def to_json(self) -> dict[str, Any]:
        return turns_to_json(self.params, self.turns)

    def table(self) -> str:
        return f"{self.source} ({self.mode} replay, scorer {self.params.scorer})\n{format_table(self.turns)}"


def replay_recording(rec: Any, params: TurnParams) -> list[Turn]:
    """Replay a recording's received frames through the live mic pipeline (``MicPipeline``).

    Each frame event gives its arrival time and pts; its 48 kHz audio is cut from ``mic.flac``
    (stored by media time).  Between arrivals the clock ticks where the live loop ticks: at the
    pipeline's ``next_deadline()`` when no frame came first, so gaps are silence exactly as they
    were live, and the resampler, gap flushes and detector are the same code the bridge ran.
    With the recording's own parameters this reproduces its decisions.
    """
    from workbench.core.events import Vad
    from workbench.core.pipeline import MicPipeline

    frames_df = rec.of_kind("frame")
    end_t = float(rec.events["t"].max()) if len(rec.events) else 0.0
    pipe = MicPipeline(params, end_model=make_end_model(params.end_model))  # inline: the same decisions every time
    decisions: list[Vad] = []

    def run_clock_to(t: float) -> None:
        while (due := pipe.next_deadline()) is not None and due < t:
            decisions.extend(o for o in pipe.tick(due) if isinstance(o, Vad))

    if not frames_df.empty and rec.mic.size:
        mic = np.clip(np.round(rec.mic * 32768.0), -32768, 32767).astype(np.int16)
        origin = round(float(frames_df["pts_s"].iloc[0]) * MIC_RATE)
        for t, pts, n in frames_df[["t", "pts_s", "n_samples"]].itertuples(index=False):
            run_clock_to(float(t))
            i0 = round(float(pts) * MIC_RATE) - origin
            x = mic[max(0, i0) : max(0, i0 + int(n))]
            decisions += [o for o in pipe.frame(float(t), float(pts), x) if isinstance(o, Vad)]
    run_clock_to(end_t)
    decisions += [o for o in pipe.finish(end_t) if isinstance(o, Vad)]
    return vad_events_to_turns(decisions)


def vad_events_to_turns(events: Iterable[Any]) -> list[Turn]:
    """Pair ``vad`` events (objects or rows with t, decision, media_t, reason) into turns."""
    turns: list[Turn] = []
    start: Any = None
    for e in events:
        if e.decision == "speech_start":
            start = e
        elif e.decision == "speech_end" and start is not None:
            turns.append(Turn(speech_start=float(start.media_t), activity_start=float(start.t),
                              activity_end=float(e.t), end_reason=str(e.reason), speech_end=float(e.media_t)))
            start = None
    return turns


def replay_path(source: str | Any, params: TurnParams) -> ReplayReport:
    """Replay an audio file (any rate, channels) or a recording directory through the detector."""
    p = Path(source)
    if p.is_dir():
        from workbench.store.recording import load

        return ReplayReport(str(p), "recording", params, replay_recording(load(p), params))
    return ReplayReport(str(p), "file", params, detect_path(p, params))
