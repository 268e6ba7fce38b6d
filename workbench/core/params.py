"""Turn-detection parameters: one frozen record of every knob, recorded with a session and replayable offline.

Each scorer validates its own settings (``scorers.validate_settings``); this module checks the detector's own
(thresholds of time, endpointing, the end model's threshold) and the types of a dict read from JSON.  Reading a
parameters file is a shell's job (``workbench.store.paramfile.read_params``): the core only builds from a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.core.endturn import END_MODEL_NAMES
from workbench.core.scorers import SCORER_NAMES, check_range, validate_settings

ENDPOINTING_NAMES = ("fixed", "dynamic")


@dataclass(frozen=True)
class TurnParams:
    """Turn-detection settings; every knob is recorded with a session and replayable offline."""

    start_db: float = -40.0
    stop_db: float = -45.0
    min_speech_ms: float = 100
    silence_ms: float = 700
    pre_roll_ms: float = 300
    max_turn_ms: float = 60000
    scorer: str = "energy"
    webrtcvad_mode: int = 3
    webrtcvad_frame_ms: int = 20
    silero_threshold: float = 0.5
    silero_neg_threshold: float = 0.35
    noise_margin_db: float = 0.0
    endpointing: str = "fixed"
    max_silence_ms: float = 3000
    dynamic_alpha: float = 0.3
    dynamic_margin: float = 1.0
    end_model: str = "none"
    end_threshold: float = 0.5

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter and its allowed range.

        Every scorer's settings are checked, not only the chosen scorer's: a recorded parameter set is replayed
        and swept with other scorers, so none of its values may be out of range.
        """
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"TurnParams.scorer = {self.scorer!r} is not one of: {', '.join(SCORER_NAMES)}")
        validate_settings(self, "energy")
        check_range(self, "min_speech_ms", 0, 5000, "must be between 0 and 5000 ms")
        check_range(self, "silence_ms", 10, 60000, "must be between 10 and 60000 ms")
        check_range(self, "pre_roll_ms", 0, 5000, "must be between 0 and 5000 ms")
        check_range(self, "max_turn_ms", self.min_speech_ms + 1, 3_600_000,
                    f"must be between min_speech_ms + 1 ({self.min_speech_ms + 1:g}) and 3600000 ms")
        validate_settings(self, "webrtcvad")
        validate_settings(self, "silero")
        if self.endpointing not in ENDPOINTING_NAMES:
            raise ValueError(f"TurnParams.endpointing = {self.endpointing!r} is not one of: "
                             f"{', '.join(ENDPOINTING_NAMES)}")
        check_range(self, "max_silence_ms", 10, 60000,
                    "must be between 10 and 60000 ms (below silence_ms it is silence_ms)")
        check_range(self, "dynamic_alpha", 0.01, 1, "must be between 0.01 and 1")
        check_range(self, "dynamic_margin", 0.1, 10, "must be between 0.1 and 10")
        if self.end_model not in END_MODEL_NAMES:
            raise ValueError(f"TurnParams.end_model = {self.end_model!r} is not one of: {', '.join(END_MODEL_NAMES)}")
        check_range(self, "end_threshold", 0.01, 0.99, "must be between 0.01 and 0.99")

    @property
    def policy(self) -> str:
        """A short name of the end-of-turn policy: scorer, then dynamic and/or model when used."""
        parts = [self.scorer]
        if self.endpointing == "dynamic":
            parts.append("dynamic")
        if self.end_model != "none":
            parts.append(self.end_model)
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TurnParams:
        """Build and validate; unknown keys and wrong types are errors, not silently dropped."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in fields:
                raise ValueError(f"unknown TurnParams key {key!r}; known: {', '.join(fields)}")
            kind = fields[key].type  # a string: annotations are postponed
            try:
                if isinstance(value, bool):
                    raise TypeError
                if kind == "str":
                    if not isinstance(value, str):
                        raise TypeError
                    kwargs[key] = value
                elif kind == "int":
                    if float(value) != int(value):
                        raise TypeError
                    kwargs[key] = int(value)
                else:
                    kwargs[key] = float(value)
            except (TypeError, ValueError):
                msg = f"TurnParams.{key} = {value!r} has the wrong type; expected {kind}"
                raise ValueError(msg) from None
        params = cls(**kwargs)
        params.validate()
        return params
