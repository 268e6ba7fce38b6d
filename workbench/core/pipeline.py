"""The mic side of the bridge as one sans-I/O object: frames and ticks in, events and messages out.

Live, ``bridge.py`` feeds it what ``track.recv()`` returns and ticks at ``next_deadline()``
when no frame came first; offline, ``replay.replay_recording`` feeds it a recording's frames
with their real arrival times and ticks at the same deadlines.  Same object, same decisions.

Per frame: map media time (pts) onto the session clock, notice gaps, resample 48k->16k
(soxr stream), run the turn detector, then gate the audio through ``SendOrder``.  Per tick:
when frames have stopped, flush what soxr holds back (the turn's tail) and let the
detector end the turn on the clock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.core.events import EndScore, Event, Frame, FrameGap, Vad
from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE, SENT_RATE, level_dbfs
from workbench.core.resample import Resampler
from workbench.core.sender import Outgoing, SendOrder
from workbench.core.turns import Decision, DecisionKind, TurnDetector

GAP_S = 0.06  # no frame for this long is a gap (frames are 20 ms apart; loopback jitter stays well below)
# Media time that keeps arriving this late, for this much audio, means the sender's clock stood still
# (a browser's replaceTrack(null) resumes pts where it stopped): re-anchor media time on arrival.
# aiortc's jitter buffer releases at most ~100 ms of stale audio after a gap, so that alone never re-anchors.
REANCHOR_LATE_S = 0.3
REANCHOR_AFTER_S = 0.2
# A tick this long after the gap is due: the gap test is strict (> gap_s), so a tick exactly on time would not see it.
GAP_MARGIN_S = 0.001
# Audio goes out in messages of at least this much (ActivityEnd sends what is pending first): each SDK message
# costs CPU (a pydantic model, base64, JSON, a websocket frame) whatever its length, and with manual activity
# detection the answer waits for ActivityEnd anyway, so gathering delays nothing the user hears.
SEND_CHUNK_MS = 100.0

Output = Event | Outgoing


class MicPipeline:
    """Ingest -> resample -> turn detector -> send order, for one microphone."""

    def __init__(self, params: TurnParams, gap_s: float = GAP_S, send_chunk_ms: float = SEND_CHUNK_MS,
                 end_model: Any = None) -> None:
        """``end_model``: the end-of-turn model ``params.end_model`` names, owned by the caller (``TurnDetector``):
        live, a shared ``io.endmodel.EndModelWorker``'s ``session(name)`` (scored off the loop); offline replay,
        ``store.models.make_end_model(name)`` (scored inline, the same decisions every time)."""
        self.params = params
        self.gap_s = gap_s
        self.detector = TurnDetector(params, rate=SENT_RATE, end_model=end_model)
        self.order = SendOrder(rate=SENT_RATE, chunk_ms=send_chunk_ms)
        self.resampler = Resampler()
        self.media_offset: float | None = None  # session time of media time 0
        self.last_arrival: float | None = None
        self._gap_flushed = False
        self._late_run_s = 0.0  # media seconds of consecutive frames arriving > REANCHOR_LATE_S late
        self.reanchors = 0

    def frame(self, t: float, pts_s: float, samples: np.ndarray) -> list[Output]:
        """A frame of int16 mono 48 kHz audio arrived at session time ``t`` with media time ``pts_s``."""
        out: list[Output] = []
        if self.media_offset is None:
            self.media_offset = t - pts_s
        if self.last_arrival is not None and t - self.last_arrival > self.gap_s:
            out.append(FrameGap(t=t, start_t=self.last_arrival, gap_s=round(t - self.last_arrival, 4), resumed=True))
        out += self.tick(t)  # the clock reached this arrival before the frame is judged
        self.last_arrival = t
        self._gap_flushed = False
        out.append(Frame(t=t, pts_s=round(pts_s, 6), n_samples=int(samples.size), rate=MIC_RATE,
                         level_db=round(level_dbfs(samples), 2)))
        if t - (pts_s + self.media_offset) > REANCHOR_LATE_S:
            self._late_run_s += samples.size / MIC_RATE
            if self._late_run_s >= REANCHOR_AFTER_S:
                self.media_offset = t - pts_s
                self._late_run_s = 0.0
                self.reanchors += 1
        else:
            self._late_run_s = 0.0
        for chunk_t, chunk in self.resampler.push(pts_s + self.media_offset, samples):
            out += self._feed(chunk_t, chunk)
        return out

    def tick(self, t: float) -> list[Output]:
        """The clock reads ``t``; decisions must not wait for frames."""
        out: list[Output] = []
        if self.last_arrival is not None and not self._gap_flushed and t - self.last_arrival > self.gap_s:
            # Frames stopped (DTX, muted track, stall): judge and send the tail soxr holds back now.
            self._gap_flushed = True
            for chunk_t, chunk in self.resampler.flush():
                out += self._feed(chunk_t, chunk)
        out += self._apply(self.detector.tick(t))[0]
        return out

    def next_deadline(self) -> float | None:
        """Clock time at which ``tick`` next has something to do (flush a gap, end a turn); None: only frames.

        While frames keep coming every frame ticks the clock itself, so the live loop needs a timer
        only for this: the moment frames are late enough to matter (Failure B's case).
        """
        due = self.detector.next_deadline()
        if self.last_arrival is not None and not self._gap_flushed:
            gap_due = self.last_arrival + self.gap_s + GAP_MARGIN_S
            due = gap_due if due is None else min(due, gap_due)
        return due

    def finish(self, t: float) -> list[Output]:
        """The track ended: flush and close any open turn (``end_of_audio``)."""
        out: list[Output] = []
        for chunk_t, chunk in self.resampler.flush():
            out += self._feed(chunk_t, chunk)
        out += self._apply(self.detector.finish(t))[0]
        return out

    def _feed(self, media_t: float, chunk: np.ndarray) -> list[Output]:
        out, started = self._apply(self.detector.frame(media_t, chunk))
        if not started:  # a start's pre-roll already holds this chunk
            out += self.order.audio(media_t, chunk)
        return out

    def _apply(self, decisions: list[Decision]) -> tuple[list[Output], bool]:
        out: list[Output] = []
        started = False
        for d in decisions:
            if d.kind == DecisionKind.END_SCORE:
                out.append(EndScore(t=round(d.t, 6), model=self.params.end_model, probability=d.probability,
                                    threshold=self.params.end_threshold, complete=d.reason == "complete",
                                    silence_ms=d.silence_ms, media_t=round(d.speech_t, 6)))
                continue
            out.append(Vad(t=round(d.t, 6), decision=str(d.kind), reason=d.reason, media_t=round(d.speech_t, 6),
                           level_db=None if d.level_db is None else round(d.level_db, 2)))
            if d.kind == DecisionKind.SPEECH_START:
                out += self.order.start(d.pre_roll, d.speech_t)
                started = True
            elif d.kind == DecisionKind.SPEECH_END:
                out += self.order.end(d.speech_t)
        return out, started
