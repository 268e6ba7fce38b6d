"""Dynamic endpointing: a silence window that adapts to the speaker's own pauses (sans-I/O).

Why: one fixed window is wrong for most speakers; someone who pauses 1.5 s to think needs a longer
window than someone who pauses 300 ms between phrases.  Like LiveKit Agents' ``DynamicEndpointing``
(livekit/agents, livekit-agents/livekit/agents/voice/endpointing.py: an exponential moving average of
the user's pauses between utterances, clamped to [min_delay, max_delay]), the window here is an EMA of
the pauses this speaker made, observed from the turn detector's own decisions:

- a pause inside an open turn (speech stopped for at least ``MIN_PAUSE_S`` and resumed), and
- a pause that ended a turn but after which the speaker resumed within the upper bound: a false
  cut-off by our own window, which is exactly what the window should have covered.

``window_s = clamp(margin * ema, min_s, max_s)``; before any pause is seen it is ``min_s``.  Plain
class, fed durations, no clock of its own: the detector asks it for the window at each deadline.
"""

from __future__ import annotations

MIN_PAUSE_S = 0.2  # shorter gaps are the stops and breaths of fluent speech, not pauses to learn from


class DynamicWindow:
    """EMA of the speaker's pauses -> silence window, clamped to ``[min_s, max_s]``."""

    def __init__(self, min_s: float, max_s: float, alpha: float = 0.3, margin: float = 1.0) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"DynamicWindow needs 0 < min_s <= max_s, got {min_s:g}, {max_s:g}")
        if not 0 < alpha <= 1:
            raise ValueError(f"DynamicWindow alpha must be in (0, 1], got {alpha:g}")
        self.min_s = min_s
        self.max_s = max_s
        self.alpha = alpha
        self.margin = margin
        self.ema_s: float | None = None
        self.pauses = 0

    def observe(self, pause_s: float) -> None:
        """The speaker paused ``pause_s`` and went on; pauses under ``MIN_PAUSE_S`` are ignored."""
        if pause_s < MIN_PAUSE_S:
            return
        self.pauses += 1
        p = min(pause_s, self.max_s)
        self.ema_s = p if self.ema_s is None else self.alpha * p + (1 - self.alpha) * self.ema_s

    @property
    def window_s(self) -> float:
        if self.ema_s is None:
            return self.min_s
        return min(self.max_s, max(self.min_s, self.margin * self.ema_s))
