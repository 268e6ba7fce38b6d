import numpy as np
from conftest import tone

from workbench.core.resample import Resampler


def tone_n(n: int, rate: int = 48_000, start: int = 0) -> np.ndarray:
    """``n`` samples of a 440 Hz tone (peak 12000) at ``rate``, from sample ``start``."""
    return tone(n / rate, -11.74, 440.0, rate=rate, start=start, dtype=np.int16)


def test_contiguous_stream_keeps_every_sample_and_time():
    r = Resampler()
    out = []
    for i in range(100):
        out += r.push(i * 0.02, tone_n(960, start=i * 960))
    out += r.flush()
    assert sum(y.size for _, y in out) == 100 * 320
    times = [t for t, _ in out]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:], strict=False))
    y = np.concatenate([y for _, y in out]).astype(np.float64)
    ref = tone_n(32000, rate=16_000).astype(np.float64)
    err = y[200:-200] - ref[200:-200]
    assert 10 * np.log10(np.mean(ref**2) / np.mean(err**2)) > 40  # a clean, aligned stream


def test_gap_in_media_time_restarts_the_clock_without_inventing_audio():
    r = Resampler()
    out = []
    for i in range(10):
        out += r.push(i * 0.02, tone_n(960))
    out += r.push(5.0, tone_n(960))  # frames stopped for ~4.8 s (DTX)
    out += r.flush()
    total = sum(y.size for _, y in out)
    assert total == 11 * 320
    after = [t for t, _ in out if t >= 4.9]
    assert after and abs(after[0] - 5.0) < 1e-9
