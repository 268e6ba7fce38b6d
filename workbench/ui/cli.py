"""The ``workbench`` command: demo, run, emulator, vad, diagnose (and the plugged commands).

Every command turns bad input into one line on stderr (``workbench: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[2] / "recordings" / "candidate.flac"
# Modules that add their own subcommands with ``register(subparsers)`` (heavy imports stay inside them).
PLUGGED = (
    "workbench.ui.plots", "workbench.analysis.sweep", "workbench.ui.serve", "workbench.analysis.export",
)
DEFAULT_LIVE_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"


class UsageError(Exception):
    """Bad input from the command line; printed as one line."""


def _default_out(name: str) -> Path:
    return Path("recordings") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _seconds_or_off(text: str) -> float | None:
    """A ``--ping-timeout`` value: seconds > 0, or ``off``/``none``/0 for no timeout."""
    if text.strip().lower() in ("off", "none", "0"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 s or 'off', got {text!r}")
    return value


def _add_session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="recording directory (default recordings/<name>-<time>)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--base-url", help="a Live endpoint to use instead of the embedded emulator "
                       "(https://host:port; trust its certificate with SSL_CERT_FILE)")
    where.add_argument("--live", action="store_true", help="use real Gemini (needs GEMINI_API_KEY)")
    add_api_key_arg(p)
    p.add_argument("--model", default=DEFAULT_LIVE_MODEL, help="model name (default %(default)s)")
    p.add_argument("--params", type=Path, help="turn-detector parameters as JSON (written by the tuning panel)")
    p.add_argument("--threshold-db", type=float, help="speech start threshold in dBFS (default -40)")
    p.add_argument("--stop-db", type=float, help="level to stay in speech, dBFS (default: threshold - 5)")
    p.add_argument("--silence-ms", type=float, help="silence that ends a turn, ms (default 700)")
    p.add_argument("--pre-roll-ms", type=float, help="audio sent from before the onset decision, ms (default 300)")
    p.add_argument("--min-speech-ms", type=float, help="speech needed before a turn starts, ms")
    p.add_argument("--scorer", help="turn-detector scorer: energy (default), webrtcvad, silero")
    _add_end_args(p)
    p.add_argument("--dtx", action=argparse.BooleanOptionalAction, default=None,
                   help="stop sending WebRTC packets while the source is digitally silent (Failure B)")
    p.add_argument("--no-greeting", action="store_true", help="do not ask the agent to greet first")
    p.add_argument("--ping-interval", type=float, default=20.0, help="websocket keepalive ping interval, s")
    p.add_argument("--ping-timeout", type=_seconds_or_off, default=None, metavar="S|off",
                   help="websocket keepalive ping timeout, s (default off: pongs are recorded, never waited for; "
                        "a dead connection is found by the missing answer instead)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="websocket frames buffered unread before reading pauses (websockets max_queue)")
    p.add_argument("--close-timeout", type=float, default=5.0, help="websocket close handshake timeout, s")
    p.add_argument("--reply-s", type=float, default=1.0, help="emulator: length of each spoken answer, s")
    p.add_argument("--profile", choices=["ideal", "real"], default="real",
                   help="emulator: real (default) behaves like the Live API as the public record shows it (late "
                        "pongs, barge-in, time limits, snapshot handles, strict input); ideal is the forgiving server")
    p.add_argument("--seed", type=int, default=0, help="emulator: seed of its random draws (default 0)")
    p.add_argument("--pong-delay", type=float, metavar="S", help="emulator: answer pings S seconds late "
                   "(default: the profile's; real draws 8-30 s)")
    p.add_argument("--connection-s", type=float, metavar="S", help="emulator: connection age limit, then goAway "
                   "and close 1011 (default: the profile's; real 600)")
    p.add_argument("--session-s", type=float, metavar="S", help="emulator: session time limit without context "
                   "window compression (default: the profile's; real 900)")
    p.add_argument("--fault", action="append", default=[], metavar="NAME[:ARG]",
                   help="emulator fault, repeatable: no-response[:MODE][:TURN], stall[:S[@start]], "
                        "close-1011[:S|mid-turn], go-away[:S], slow[:S], flood[:RATE], slow-pong[:S]; '@every' "
                        "hits every connection (see workbench emulator --help)")
    p.add_argument("--naive", metavar="MODE", help="reproduce a naive-bridge mistake: receive-once, frame-count, "
                   "two-tasks (turns reconnect and the watchdog off unless asked for)")
    p.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=None,
                   help="on 1011/1006/goAway/watchdog resume with the latest handle and re-send unanswered turns "
                        "(default on, off with --naive)")
    p.add_argument("--watchdog", type=float, default=None, metavar="S",
                   help="response watchdog: seconds without a response after ActivityEnd (default 5, 0 = off; "
                        "off with --naive)")
    p.add_argument("--watchdog-action", choices=["reconnect", "none"], default="reconnect",
                   help="what the watchdog does: reconnect and re-send the turn (default), or only record it")
    p.add_argument("--heard-timeout", type=float, default=20.0, metavar="S",
                   help="the server heard the turn (input transcription): wait up to S for its answer before "
                        "reconnecting (default %(default)s)")
    p.add_argument("--max-resends", type=int, default=2, metavar="N",
                   help="re-sends of one user turn before giving up (default %(default)s)")
    p.add_argument("--max-reconnects", type=int, default=5, metavar="N",
                   help="reconnects allowed in any 60 s before giving up (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the turn table")


def _add_end_args(p: argparse.ArgumentParser) -> None:
    """End-of-turn policy flags shared by run, demo and vad (issue 15)."""
    p.add_argument("--end-model", choices=["none", "smart-turn"], help="end-of-turn model scored after "
                   "--silence-ms of silence: complete ends the turn, incomplete waits up to --max-silence-ms")
    p.add_argument("--end-threshold", type=float, help="end model probability that means complete (default 0.5)")
    p.add_argument("--max-silence-ms", type=float, help="longest wait after an incomplete score, and the dynamic "
                   "window's ceiling, ms (default 3000)")
    p.add_argument("--endpointing", choices=["fixed", "dynamic"], help="fixed silence window (default) or one "
                   "that learns the speaker's pauses, between --silence-ms and --max-silence-ms")
    p.add_argument("--noise-margin-db", type=float, help="energy scorer: thresholds at least this far above an "
                   "adaptive noise floor, dB (default 0 = off; 13 works at 15 dB SNR)")


def add_api_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key-env", metavar="NAME",
                   help="send the API key held in environment variable NAME (GEMINI_API_KEY goes only to Google's "
                        "endpoint with --live; the emulator and --base-url get no key unless named here)")


def api_key_from(args: argparse.Namespace) -> str | None:
    """The key ``--api-key-env NAME`` names (None without it); checks ``--live`` has a key."""
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {args.api_key_env}: no such variable in the environment (or empty)")
    if args.live and not (key or os.environ.get("GEMINI_API_KEY")):
        raise UsageError("--live needs GEMINI_API_KEY in the environment (or --api-key-env NAME)")
    return key


def _params(args: argparse.Namespace):
    from workbench.core.params import TurnParams
    from workbench.store.paramfile import read_params

    base = read_params(args.params) if args.params else TurnParams()
    changes: dict[str, object] = {}
    if args.threshold_db is not None:
        changes["start_db"] = args.threshold_db
        changes["stop_db"] = args.stop_db if args.stop_db is not None else min(base.stop_db, args.threshold_db - 5.0)
    elif args.stop_db is not None:
        changes["stop_db"] = args.stop_db
    for name in ("silence_ms", "pre_roll_ms", "min_speech_ms", "scorer", "end_model", "end_threshold",
                 "max_silence_ms", "endpointing", "noise_margin_db"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    params = base.replace(**changes) if hasattr(base, "replace") else type(base)(**{**base.to_dict(), **changes})
    params.validate()
    if params.end_model == "smart-turn":
        from workbench.store.models import SMART_TURN_ENV, SMART_TURN_FILE, smart_turn_path

        if smart_turn_path() is None:
            raise UsageError(f"--end-model smart-turn needs {SMART_TURN_FILE}: `pip install --no-deps pipecat-ai` "
                             f"or set {SMART_TURN_ENV} to the file")
    return params


def _session(args: argparse.Namespace, audio_path: Path, name: str, dtx_default: bool) -> int:
    from workbench.core.pcm import MIC_RATE, to_int16
    from workbench.store.audiofile import load_mono

    params = _params(args)
    audio = to_int16(load_mono(audio_path, MIC_RATE))

    from workbench.analysis.tables import format_turn_table, turn_table
    from workbench.io import bridge, live
    from workbench.store.recording import load
    out = args.out or _default_out(name)
    if (Path(out) / "events.jsonl").exists():
        raise UsageError(f"{out} already holds a recording; choose another --out or delete it")
    settings = live.LiveSettings(
        model=args.model,
        base_url=args.base_url,
        api_key=api_key_from(args),
        ping_interval_s=args.ping_interval,
        ping_timeout_s=args.ping_timeout,
        max_queue=args.max_queue,
        close_timeout_s=args.close_timeout,
        greeting_prompt=None if args.no_greeting else live.GREETING_PROMPT,
    )
    from workbench.emulator import EmulatorConfig, parse_fault

    faults = [parse_fault(f) for f in args.fault]
    behaviour = {name: value for name, value in (("pong_delay_s", args.pong_delay), ("connection_s",
                 args.connection_s), ("session_s", args.session_s)) if value is not None}
    emu_config = EmulatorConfig(profile=args.profile, seed=args.seed, reply_s=args.reply_s, faults=faults, **behaviour)
    if faults and (args.live or args.base_url):
        raise UsageError("--fault needs the embedded emulator (not --live or --base-url)")
    watchdog = (None if args.naive else 5.0) if args.watchdog is None else args.watchdog
    cfg = bridge.SessionConfig(params=params, live=settings, name=name, source=str(audio_path),
                               dtx=dtx_default if args.dtx is None else args.dtx, naive=args.naive,
                               reconnect=not args.naive if args.reconnect is None else args.reconnect,
                               watchdog_s=watchdog or None, watchdog_action=args.watchdog_action,
                               heard_timeout_s=args.heard_timeout, max_resends=args.max_resends,
                               max_reconnects=args.max_reconnects)
    say = (lambda _m: None) if args.quiet else (lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True))

    async def go() -> bridge.SessionResult:
        if args.live or args.base_url:
            return await bridge.run_session(audio, cfg, out, progress=say)
        from workbench.emulator import Emulator

        async with Emulator(emu_config, port=0) as emu:
            say(f"embedded emulator at {emu.base_url}")
            settings.base_url = emu.base_url
            settings.ssl_context = emu.client_ssl_context()
            result = await bridge.run_session(audio, cfg, out, progress=say)
            violations = list(emu.violations)
        emu.write_log(out)
        if violations:
            say(f"emulator saw {len(violations)} protocol violation(s): " +
                "; ".join(f"{v.rule} ({v.detail})" for v in violations[:5]))
        else:
            say("emulator saw no protocol violation")
        return result

    say(f"{audio_path}: {audio.size / MIC_RATE:.1f} s of audio; params {params.to_dict()}")
    from workbench.io import eventloop

    result = eventloop.run(go())
    rec = load(result.path)
    tt = turn_table(rec)
    print(format_turn_table(tt))
    print(f"recording: {result.path}")
    if result.gave_up:
        print(f"workbench: gave up: {result.gave_up['reason']}: {result.gave_up['detail']}", file=sys.stderr)
        return 1
    if result.error:
        print(f"workbench: session ended with an error: {result.error}", file=sys.stderr)
        return 1
    if result.reconnects:
        print(f"reconnected {result.reconnects} time(s); rows marked reN are turns re-sent on a new connection")
    unanswered = result.unanswered
    if unanswered:
        print(f"workbench: {unanswered} turn(s) got no answer", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if not BUNDLED.exists():
        raise UsageError(f"bundled recording {BUNDLED} is missing; run python -m workbench.store.synth")
    return _session(args, BUNDLED, "demo", dtx_default=True)


def cmd_run(args: argparse.Namespace) -> int:
    return _session(args, args.audio, args.audio.stem, dtx_default=False)


def cmd_vad(args: argparse.Namespace) -> int:
    from workbench.analysis.replay import replay_path

    params = _params(args)
    report = replay_path(args.source, params)
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.table())
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Load, diagnose, print; exit code 1 when any finding is an error."""
    from dataclasses import asdict

    from workbench.analysis.diagnose import diagnose, format_findings
    from workbench.store.recording import load

    rec = load(args.recording)
    findings = diagnose(rec, response_timeout_s=args.response_timeout, lag_threshold_ms=args.lag_threshold_ms)
    if args.format == "json":
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        print(f"{rec.path}:")
        print(format_findings(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``workbench`` parser.  ``command``: the subcommand about to run; when it is a built-in one the plugged
    modules are not imported (``workbench vad FILE`` then pays for no pandas, asyncio or process pools)."""
    ap = argparse.ArgumentParser(
        prog="workbench",
        description="Gemini Live turn-taking workbench: run, record, replay and diagnose bridge sessions.",
        epilog="Start with `workbench demo`, then `workbench vad RECORDING` to replay its turn decisions.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="end-to-end session on the bundled candidate recording (embedded emulator)",
                       description="Play the bundled candidate track through loopback WebRTC into the embedded "
                                   "Live API emulator, record everything and print the turn table.")
    _add_session_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="end-to-end session on any audio file",
                       description="Like demo, for any audio file (any rate, mono or stereo).")
    p.add_argument("--audio", type=Path, required=True, help="audio file to play as the microphone")
    _add_session_args(p)
    p.set_defaults(func=cmd_run)

    sub.add_parser("emulator", help="serve the Live API emulator (TLS websocket); see workbench emulator --help")

    p = sub.add_parser("vad", help="replay the turn detector offline over audio or a recording",
                       description="Run the live turn detector over an audio file, or over a recording's received "
                                   "frames with their real arrival times and gaps, faster than real time.")
    p.add_argument("source", type=Path, help="audio file or recording directory")
    p.add_argument("--format", choices=["table", "json"], default="table")
    for opt, h in (("--params", "parameters JSON"), ("--threshold-db", "start threshold, dBFS"),
                   ("--stop-db", "stop threshold, dBFS"), ("--silence-ms", "silence window, ms"),
                   ("--pre-roll-ms", "pre-roll, ms"), ("--min-speech-ms", "minimum speech, ms"),
                   ("--scorer", "energy | webrtcvad | silero")):
        p.add_argument(opt, type=Path if opt == "--params" else (str if opt == "--scorer" else float), help=h)
    _add_end_args(p)
    p.set_defaults(func=cmd_vad)

    p = sub.add_parser(
        "diagnose", help="diagnose a recording: which failure happened, the evidence and the likely cause",
        description="Check a recording for the known failures (no ActivityEnd, no answer, receive loop stopped, "
                    "unanswered pings, blocked loop, close codes, goAway, reconnects). Exit 0 when no error "
                    "finding, 1 otherwise.")
    p.add_argument("recording", help="recording directory (recordings/<session>)")
    p.add_argument("--response-timeout", type=float, default=5.0, metavar="S",
                   help="seconds after ActivityEnd within which a response must arrive (default %(default)s)")
    p.add_argument("--lag-threshold-ms", type=float, default=100.0, metavar="MS",
                   help="event-loop lag worth reporting, ms (default %(default)s)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_diagnose)
    if command not in ("demo", "run", "vad"):
        for name in PLUGGED:
            importlib.import_module(name).register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:  # its own parser, options and --help included
        from workbench.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    ap = build_parser(argv[0] if argv else None)
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # AudioInputError is a ValueError; RecordingError is looked up only if its module was loaded (importing
        # it here would import pandas for every command, a plain file's replay included).
        rec = sys.modules.get("workbench.store.recording")
        if isinstance(exc, UsageError | ValueError) or (rec is not None and isinstance(exc, rec.RecordingError)):
            print(f"workbench: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
