"""Faults the emulator can inject, named as on the command line: ``NAME[:ARG][@every]``.

A fault hits the first connection only (so a resume gets a working server), unless the spec ends in
``@every``: then every connection of the emulator gets it (a persistent server-side problem).
"""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = {
    "no-response": "do not answer user turns: ARG is MODE, TURN or MODE:TURN (TURN 1-based over the conversation, "
                   "default every turn); MODE silent (nothing, Failure A; default), heard (the turn's "
                   "inputTranscription, then nothing), empty (turnComplete with no content), late (transcript, a "
                   "long gap, the transcript again, then the answer), noise (an activity without speech is not "
                   "answered)",
    "stall": "stop reading the socket (so stop answering pings) and stop sending for ARG seconds (default 30), "
             "from the first activityEnd; ARG 'N@start' stalls from the first activityStart instead",
    "close-1011": "close with 1011 ARG seconds after setup (default 5), or 'mid-turn' during the first spoken answer "
                  "to the user",
    "go-away": "after the first answer to the user send goAway with ARG seconds left (default 2), then close",
    "slow": "answer after ARG seconds instead of the configured latency (default 8)",
    "flood": "send ARG small inputTranscription messages per second during user speech (default 50)",
    "slow-pong": "answer each websocket ping ARG seconds late (default 25; live pongs took 8-30 s, "
                 "aicc2025/sip-to-ai PR #14)",
}
DEFAULTS = {"no-response": None, "stall": 30.0, "close-1011": 5.0, "go-away": 2.0, "slow": 8.0, "flood": 50.0,
            "slow-pong": 25.0}
STALL_TRIGGERS = ("end", "start")
NO_RESPONSE_MODES = ("silent", "heard", "empty", "late", "noise")
EVERY = "@every"


@dataclass(frozen=True)
class Fault:
    """One injected failure; ``arg`` is kept as typed (without ``@every``) and read through the properties below."""

    name: str
    arg: str | None = None
    every_connection: bool = False  # by default a fault hits the first connection only, so a resume works

    @property
    def seconds(self) -> float:
        """The fault's duration / delay / rate argument, or its default."""
        if self.arg is None or self.arg == "mid-turn" or self.name == "no-response":
            return float(DEFAULTS[self.name] or 0.0)
        return float(self.arg.partition("@")[0])

    @property
    def turn(self) -> int | None:
        """``no-response``: the user turn to ignore (None: every one)."""
        last = (self.arg or "").rpartition(":")[2]
        return int(last) if last.isdigit() else None

    @property
    def mode(self) -> str:
        """``no-response``: how the turn goes unanswered (one of ``NO_RESPONSE_MODES``)."""
        first = (self.arg or "").partition(":")[0]
        return first if first in NO_RESPONSE_MODES else "silent"

    @property
    def trigger(self) -> str:
        """``stall``: which client signal starts it, "end" (activityEnd) or "start" (activityStart)."""
        return (self.arg or "").partition("@")[2] or "end"

    def spec(self) -> str:
        """The fault as typed on the command line (``parse_fault(f.spec()) == f``)."""
        return self.name + (f":{self.arg}" if self.arg else "") + (EVERY if self.every_connection else "")


def _no_response_arg(spec: str, arg: str) -> str:
    mode, _, turn = arg.partition(":")
    if _is_number(mode):  # a bare turn number
        mode, turn = "", arg
    if mode and mode not in NO_RESPONSE_MODES:
        raise ValueError(f"fault no-response: unknown mode {mode!r} in {spec!r}; choose one of: "
                         f"{', '.join(NO_RESPONSE_MODES)}")
    if turn:
        if not _is_number(turn) or float(turn) != int(float(turn)) or float(turn) < 1:
            raise ValueError(f"fault no-response: argument {arg!r} must be a user turn number (1, 2, ...)")
        turn = str(int(float(turn)))
    return ":".join(p for p in (mode, turn) if p)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def parse_fault(spec: str) -> Fault:
    """``"stall:25"`` -> Fault("stall", "25"); ``"no-response:heard:2@every"``; a one-line ValueError names what
    is wrong."""
    text = spec.strip()
    every = text.endswith(EVERY)
    if every:
        text = text[: -len(EVERY)]
    name, _, arg = text.partition(":")
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r} in {spec!r}; choose one of: {', '.join(FAULTS)}")
    arg = arg.strip() or None
    if arg is None:
        return Fault(name, None, every)
    if name == "close-1011" and arg == "mid-turn":
        return Fault(name, arg, every)
    if name == "no-response":
        return Fault(name, _no_response_arg(spec, arg) or None, every)
    number, at, trigger = arg.partition("@")
    if at and (name != "stall" or trigger not in STALL_TRIGGERS):
        raise ValueError(f"fault {name}: bad argument {arg!r}; only stall takes '@start' or '@end' (and any fault "
                         "'@every')")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"fault {name}: argument {arg!r} must be a number") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"fault {name}: argument {arg!r} must be between 0 and 3600")
    if name == "flood" and value <= 0:
        raise ValueError(f"fault flood: argument {arg!r} must be a rate > 0 messages per second")
    return Fault(name, arg, every)
