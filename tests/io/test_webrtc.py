"""The WebRTC shell: frame helpers and the player without a network, then real loopback links.

Loopback tests play 2 s of tone bursts separated by 600 ms of digital silence and compare what
arrives by energy per 20 ms frame (Opus is lossy; samples never match).
"""

from __future__ import annotations

import asyncio
import time

import aioice.ice
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from workbench.io.ingest import RELEASE_S, Received, ingest
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import (
    FRAME_S,
    FRAME_SAMPLES,
    audio_level_dbov,
    loopback,
    mono_frame,
    patch_aioice_loopback,
    to_mono,
)

RATE = 48_000
BURST_S = 0.3
GAP_S = 0.6


class MediaClock:
    """How late each frame is against the least-late frame seen so far (the measure these tests read).

    ``late_s`` is ~0 on a steady link whatever its fixed delay; a tail the jitter buffer released after a
    sender gap shows about the gap's length.  Sender/receiver clock drift (tens of ppm) biases it by ms.
    """

    def __init__(self, stale_after_s: float = 0.1) -> None:
        self.stale_after_s = stale_after_s
        self.offset: float | None = None  # session time of media time 0 on the fastest path seen

    def late_s(self, t: float, pts_s: float) -> float:
        d = t - pts_s
        if self.offset is None or d < self.offset:
            self.offset = d
        return d - self.offset

    def stale(self, t: float, pts_s: float) -> bool:
        return self.late_s(t, pts_s) > self.stale_after_s


def bursts(freq: float = 440.0, n: int = 3) -> np.ndarray:
    """``n`` amplitude-modulated tone bursts with ``GAP_S`` of digital silence between: 2.0 s for n=3."""
    t = np.arange(int(BURST_S * RATE)) / RATE
    am = 0.55 + 0.45 * np.sin(2 * np.pi * 5 * t)  # an envelope worth correlating, not just on/off
    tone = (np.sin(2 * np.pi * freq * t) * am * 12000).astype(np.int16)
    parts: list[np.ndarray] = []
    for i in range(n):
        parts.append(tone)
        parts.append(np.zeros(int((GAP_S if i < n - 1 else 0.2) * RATE), np.int16))
    return np.concatenate(parts)


def pitch_hz(frames: list[Received]) -> float:
    x = np.concatenate([f.samples for f in frames]).astype(np.float64)
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[np.argmax(np.abs(np.fft.rfft(x)))])


def frame_rms(x: np.ndarray) -> np.ndarray:
    n = x.size // FRAME_SAMPLES
    f = x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).astype(np.float64)
    return np.sqrt((f**2).mean(axis=1))


async def play(
    audio: np.ndarray, dtx: bool, jitter_prefetch: int | None = None, tail_s: float = 0.2, loop_decode: bool = True,
    release_s: float | None = RELEASE_S,
) -> tuple[FilePlayerTrack, list[Received], list[float]]:
    """Play ``audio`` through a real loopback link and ingest it on time.monotonic(), asking for a tick every 10 ms.

    ``release_s=None``: leave the jitter buffer's tail to aiortc (released only when packets resume)."""
    track = FilePlayerTrack(audio, dtx=dtx, tail_s=tail_s)
    link = await loopback(track, jitter_prefetch=jitter_prefetch, loop_decode=loop_decode)
    frames: list[Received] = []
    ticks: list[float] = []
    start = time.monotonic()
    try:
        async with asyncio.timeout(audio.size / RATE + tail_s + 5):
            await ingest(link.remote_track, time.monotonic, frames.append, ticks.append,
                         lambda: (ticks[-1] if ticks else start) + 0.01, release_s=release_s)
    finally:
        await link.close()
    assert track.done.is_set()
    return track, frames, ticks


def envelope_match(src: np.ndarray, frames: list[Received], pts0_s: float = 0.0) -> tuple[float, int]:
    """Correlation of received vs source energy per frame at its pts, and the best lag in frames.

    ``pts0_s``: source time of received pts 0 (the receiver counts from the first packet it got).
    """
    ref = frame_rms(src)
    idx = np.array([round((f.pts_s + pts0_s) / FRAME_S) for f in frames])
    got = np.array([frame_rms(f.samples)[0] for f in frames])
    keep = idx < ref.size
    idx, got = idx[keep], got[keep]
    corr = {lag: float(np.corrcoef(got, ref[np.clip(idx + lag, 0, ref.size - 1)])[0, 1]) for lag in range(-5, 6)}
    best = max(corr, key=lambda k: corr[k])
    return corr[0], best


# -- no network ------------------------------------------------------------------


def test_to_mono_averages_packed_stereo_and_passes_mono() -> None:
    left = np.arange(960, dtype=np.int16)
    stereo = np.stack([left, left + 2], axis=1).reshape(1, -1)  # packed: L R L R ...
    f = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    f.sample_rate = RATE
    assert f.to_ndarray().shape == (1, 1920)
    np.testing.assert_array_equal(to_mono(f), left + 1)
    m = mono_frame(left, pts=960)
    assert m.pts == 960 and float(m.time_base) == 1 / RATE and m.samples == 960
    np.testing.assert_array_equal(to_mono(m), left)


def test_to_mono_rejects_other_rates() -> None:
    f = mono_frame(np.zeros(160, np.int16), pts=0, rate=8000)
    with pytest.raises(ValueError, match="48000"):
        to_mono(f)


def test_player_paces_frames_pads_and_ends() -> None:
    audio = np.full(FRAME_SAMPLES * 5 + 100, 1000, np.int16)  # 5 frames and a bit

    async def run() -> tuple[list[av.AudioFrame], float, FilePlayerTrack]:
        track = FilePlayerTrack(audio, tail_s=0.04)
        frames = []
        with pytest.raises(MediaStreamError):
            while True:
                frames.append(await track.recv())
        return frames, time.monotonic() - (track.t_start or 0.0), track

    frames, elapsed, track = asyncio.run(run())
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(8)]  # 6 audio + 2 tail frames
    assert to_mono(frames[5])[:100].tolist() == [1000] * 100 and not to_mono(frames[5])[100:].any()
    assert 0.15 <= elapsed < 0.25  # 8 frames: the 9th recv() waits to 160 ms, then ends
    assert track.done.is_set() and track.readyState == "ended" and track.position_s == pytest.approx(0.16)


def test_player_dtx_skips_digital_silence_but_keeps_time() -> None:
    one = np.full(FRAME_SAMPLES, 500, np.int16)
    audio = np.concatenate([one, np.zeros(FRAME_SAMPLES * 10, np.int16), one])

    async def run() -> list[tuple[float, int]]:
        track = FilePlayerTrack(audio, dtx=True, tail_s=0.1)
        out = []
        with pytest.raises(MediaStreamError):
            while True:
                f = await track.recv()
                out.append((time.monotonic() - (track.t_start or 0.0), f.pts))
        out.append((time.monotonic() - (track.t_start or 0.0), -1))
        return out

    out = asyncio.run(run())
    assert [p for _, p in out] == [0, 11 * FRAME_SAMPLES, -1]
    assert out[1][0] == pytest.approx(0.22, abs=0.02)  # slept through the silence to the true due time
    assert out[2][0] == pytest.approx(0.34, abs=0.02)  # and through the tail before ending


def test_media_clock_flags_a_released_tail() -> None:
    mc = MediaClock(stale_after_s=0.1)
    assert mc.late_s(0.082, 0.0) == 0.0 and mc.late_s(0.103, 0.02) == pytest.approx(0.001)
    assert mc.stale(1.002, 0.32)  # 80 ms tail released 600 ms late
    assert not mc.stale(1.102, 1.02)


def test_patch_is_idempotent_and_adds_loopback() -> None:
    patch_aioice_loopback()
    patch_aioice_loopback()
    first = aioice.ice.get_host_addresses
    patch_aioice_loopback()
    assert aioice.ice.get_host_addresses is first
    assert "127.0.0.1" in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


# -- real loopback links ------------------------------------------------------------


def test_loopback_delivers_audio_in_real_time() -> None:
    src = bursts()
    track, frames, ticks = asyncio.run(play(src, dtx=False))
    pts = np.array([f.pts_s for f in frames])
    t = np.array([f.t for f in frames])
    assert np.allclose(np.diff(pts), FRAME_S)  # every frame, in order, no pts jumps
    assert len(frames) >= track.frames_sent - 5  # the jitter buffer keeps the last ~4 at the end
    latency = t - np.array([track.due(p) for p in pts])
    assert 0.0 < np.median(latency) < 0.2
    third = len(latency) // 3
    assert abs(np.median(latency[-third:]) - np.median(latency[:third])) < 0.03  # no drift (a stall may happen)
    slope = np.polyfit(pts, t, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.02)  # real-time pace
    corr, lag = envelope_match(src, frames)
    assert corr > 0.9 and lag == 0
    # the clock keeps ticking (10 ms asked); a percentile, so one stall of the whole machine does not count
    assert np.percentile(np.diff(ticks), 99) < 0.05


def test_dtx_stops_frames_in_silence_and_aiortc_releases_the_stale_tail_late() -> None:
    """aiortc's own behaviour, which ``ingest``'s release (tests/test_speech_tail.py) is there to undo."""
    src = bursts()
    track, frames, ticks = asyncio.run(play(src, dtx=True, release_s=None))
    t = np.array([f.t for f in frames])
    pts = np.array([f.pts_s for f in frames])
    assert np.all(np.diff(pts) > 0)
    gaps = np.flatnonzero(np.diff(t) > 0.4)
    assert len(gaps) == 2  # one per digital silence, frames resume after each
    for g in gaps:
        inside = [x for x in ticks if t[g] < x < t[g + 1]]
        assert len(inside) > 20 and np.percentile(np.diff([t[g], *inside, t[g + 1]]), 95) < 0.05
    # What the receiver's jitter buffer did to the first burst's tail: it arrives after the gap.
    mc = MediaClock()
    late = np.array([mc.late_s(f.t, f.pts_s) for f in frames])
    second_burst = slice(gaps[0] + 1, gaps[1] + 1)
    stale = [f for f, x in zip(frames[second_burst], late[second_burst], strict=False) if x > 0.3]
    assert 4 <= len(stale) <= 6  # ~80 ms of burst 1 (plus the encoder's mislabelled first frame)
    assert all(f.pts_s <= BURST_S + 0.001 for f in stale)
    assert frame_rms(np.concatenate([f.samples for f in stale[:4]])).min() > 1000  # speech, not silence
    corr, _ = envelope_match(src, [f for f, x in zip(frames, late, strict=False) if x < 0.1])
    assert corr > 0.9


def test_short_jitter_buffer_holds_back_one_frame() -> None:
    track, frames, _ = asyncio.run(play(bursts(n=2), dtx=True, jitter_prefetch=1, release_s=None))
    first = [f.t - track.due(f.pts_s) for f in frames[:10]]
    d_track, d_frames, _ = asyncio.run(play(bursts(n=2), dtx=True, release_s=None))
    default = [f.t - d_track.due(f.pts_s) for f in d_frames[:10]]
    assert np.median(default) - np.median(first) > 0.04  # ~20 ms instead of ~80 ms: three frames less
    mc = MediaClock()
    late = np.array([mc.late_s(f.t, f.pts_s) for f in frames])
    assert 1 <= int(np.sum(late > 0.3)) <= 2


def test_two_links_at_once_keep_their_own_audio() -> None:
    lead_s = 0.44  # b starts in a's first gap and leads with digital silence
    a = bursts(440.0)
    b = np.concatenate([np.zeros(int(lead_s * RATE), np.int16), bursts(660.0, n=2)])

    async def both() -> list[tuple[FilePlayerTrack, list[Received], list[float]]]:
        return await asyncio.gather(play(a, dtx=False), play(b, dtx=True))

    (_, fa, _), (_, fb, _) = asyncio.run(both())  # with the tail release: fb's tails come before its gaps
    assert envelope_match(a, fa) > (0.9, -1) and envelope_match(a, fa)[1] == 0
    mc = MediaClock()
    fresh_b = [f for f in fb if mc.late_s(f.t, f.pts_s) < 0.1]
    assert envelope_match(b, fresh_b, pts0_s=lead_s)[0] > 0.9  # DTX skipped the lead: pts 0 is 0.44 s
    loud_a = [f for f in fa if frame_rms(f.samples)[0] > 1000]
    assert pitch_hz(loud_a) == pytest.approx(440, abs=5) and pitch_hz(fb) == pytest.approx(660, abs=5)


def test_closing_a_link_mid_play_ends_ingest() -> None:
    async def run() -> tuple[int, float, FilePlayerTrack]:
        track = FilePlayerTrack(np.full(RATE * 5, 1000, np.int16))
        link = await loopback(track)
        asyncio.get_running_loop().call_later(0.5, lambda: asyncio.ensure_future(link.close()))
        t0 = time.monotonic()
        n = await ingest(link.remote_track, time.monotonic, lambda _frame: None)
        elapsed = time.monotonic() - t0
        await link.close()  # twice is fine
        return n, elapsed, track

    n, elapsed, track = asyncio.run(run())
    assert 15 <= n <= 30 and elapsed < 1.5
    assert track.done.is_set()


def test_the_voice_level_is_aiortcs_rfc6464_level() -> None:
    from aiortc import rtp

    rng = np.random.default_rng(0)
    for amp in (0, 1, 3, 10, 100, 1000, 10000, 40000):
        x = (rng.standard_normal(FRAME_SAMPLES) * amp).clip(-32768, 32767).astype(np.int16)
        assert audio_level_dbov(x) == rtp.compute_audio_level_dbov(mono_frame(x, 0)), amp
