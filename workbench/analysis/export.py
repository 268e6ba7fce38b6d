"""``workbench export``: a recording's turns for other tools, as OpenTelemetry spans or an Audacity label track.

pipecat and LiveKit Agents users look at turns in tracing tools, so ``--format otlp-json`` writes
the session as spans in the OTLP JSON file format (one ``ExportTraceServiceRequest`` a line, as
the OpenTelemetry file exporter writes it; ids in hex, enums as integers, times in Unix ns):
a ``session`` root span, one ``turn N`` span per activity on the wire (attempts after a reconnect
are spans of their own) with ``speech``, ``activity`` (ActivityStart..ActivityEnd) and ``response``
(ActivityEnd..turn_complete, a ``first_audio`` event) children, and the connection's life
(connects, reconnects, goAway, closes, errors) as events on the root.  The spans are made by the
``opentelemetry`` SDK and encoded by its OTLP encoder, so any OTLP reader takes them.

``--format audacity`` writes the workbench detector's turns (a replay over the recorded frames,
``workbench vad``) as an Audacity label track beside ``mic.flac``: ``start<TAB>end<TAB>label`` in
seconds from the file's first sample, the format ``sweep`` reads as labels.

The span layout is computed first as plain ``SpanSpec`` values (no SDK, easy to test); only
``otlp_json`` touches OpenTelemetry.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.analysis.replay import Turn
    from workbench.core.params import TurnParams
    from workbench.store.recording import Recording

FORMATS = ("otlp-json", "audacity")
DEFAULT_NAMES = {"otlp-json": "traces.otlp.jsonl", "audacity": "mic.labels.txt"}
SCOPE = "workbench.analysis.export"


@dataclass(frozen=True)
class SpanSpec:
    """One span on the session clock (seconds); ``error`` sets an ERROR status with that description."""

    name: str
    start_t: float
    end_t: float
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, float, dict[str, Any]], ...] = ()
    children: tuple[SpanSpec, ...] = ()
    error: str | None = None


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _vad_times(rec: Recording, decision: str) -> list[float]:
    """The VAD's speech boundaries: media time when the VAD gave one, else when it decided."""
    vad = rec.of_kind("vad")
    if not len(vad) or "decision" not in vad:
        return []
    rows = vad[vad["decision"] == decision]
    media = rows["media_t"] if "media_t" in rows else [None] * len(rows)
    return [float(m) if _finite(m) else float(t) for m, t in zip(media, rows["t"], strict=True)]


def session_spans(rec: Recording) -> SpanSpec:
    """The recording's turns and connection life as a tree of spans (see the module docstring)."""
    from workbench.analysis.tables import turn_table

    ev = rec.events
    end_t = float(ev["t"].max()) if len(ev) else 0.0
    starts, ends = _vad_times(rec, "speech_start"), _vad_times(rec, "speech_end")
    turns: list[SpanSpec] = []
    for row in turn_table(rec).itertuples():
        i = int(row.turn) - 1
        s0 = row.speech_start if _finite(row.speech_start) else (starts[i] if i < len(starts) else None)
        s1 = row.speech_end if _finite(row.speech_end) else (ends[i] if i < len(ends) else None)
        a0, a1 = float(row.activity_start), row.activity_end
        children: list[SpanSpec] = []
        if _finite(s0) and _finite(s1) and float(s1) >= float(s0):
            children.append(SpanSpec("speech", float(s0), float(s1)))
        elif _finite(s0) and not _finite(a1):  # the VAD never ended it (Failure B): open to the end
            children.append(SpanSpec("speech", float(s0), end_t, error="speech_end never decided"))
        children.append(SpanSpec("activity", a0, float(a1) if _finite(a1) else end_t,
                                 {"audio_s": round(float(row.audio_s), 3), "conn": int(row.conn)},
                                 error=None if _finite(a1) else "ActivityEnd never left the socket"))
        if _finite(a1):
            done = row.turn_complete if _finite(row.turn_complete) else None
            events = (("first_audio", float(row.first_audio), {}),) if _finite(row.first_audio) else ()
            children.append(SpanSpec("response", float(a1), float(done) if done is not None else end_t,
                                     events=events, error=None if done is not None else "no turn_complete"))
        t_lo = min([a0] + ([float(s0)] if _finite(s0) else []))
        t_hi = max(c.end_t for c in children)
        attrs = {"turn": int(row.turn), "attempt": int(row.attempt), "conn": int(row.conn),
                 "answered": bool(row.answered)}
        for name in ("end_to_audio_ms", "end_to_complete_ms"):
            if _finite(getattr(row, name)):
                attrs[name] = round(float(getattr(row, name)), 1)
        turns.append(SpanSpec(f"turn {int(row.turn)}" + (f" re{int(row.attempt) - 1}" if row.attempt > 1 else ""),
                              t_lo, t_hi, attrs, children=tuple(children),
                              error=None if row.answered else "unanswered"))
    life: list[tuple[str, float, dict[str, Any]]] = []
    ws = rec.of_kind("ws")
    for row in ws.itertuples(index=False) if len(ws) else ():
        if row.what in ("connect", "reconnect", "close"):
            attrs = {k: v for k in ("code", "reason", "detail") if _finite(v := getattr(row, k, None))
                     or (isinstance(v, str) and v)}
            if "code" in attrs:
                attrs["code"] = int(attrs["code"])
            life.append((f"ws {row.what}", float(row.t), attrs))
    srv = rec.of_kind("server")
    if len(srv) and "msg" in srv:
        for row in srv[srv["msg"] == "go_away"].drop_duplicates("t").itertuples(index=False):
            life.append(("go_away", float(row.t), {}))
    err = rec.of_kind("error")
    for row in err.itertuples(index=False) if len(err) else ():
        life.append(("error", float(row.t), {"where": str(row.where), "message": str(row.message)}))
    life.sort(key=lambda e: e[1])
    meta = rec.meta
    attrs = {"session.name": str(meta.get("name", rec.path.name)), "recorder": str(meta.get("recorder", "bridge")),
             "cut_short": rec.cut_short}
    return SpanSpec("session", 0.0, max([end_t] + [t.end_t for t in turns]), attrs, tuple(life), tuple(turns))


class _SeededIds:
    """Trace and span ids drawn from a seed (the recording), so exporting twice writes the same file."""

    def __init__(self, seed: str) -> None:
        self._rng = random.Random(hashlib.sha256(seed.encode()).digest())

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return False  # W3C trace-context's "random" flag: derived from the recording, not drawn at random


def _hex_ids(obj: Any) -> Any:
    """OTLP JSON writes trace and span ids as hex, where protobuf's JSON mapping writes bytes as base64."""
    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else _hex_ids(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_ids(v) for v in obj]
    return obj


def otlp_json(rec: Recording) -> str:
    """The session's spans as one line of OTLP JSON (an ``ExportTraceServiceRequest``)."""
    from google.protobuf import json_format
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    from workbench import __version__

    root = session_spans(rec)
    wall0 = float(rec.meta.get("start_wall", 0.0))

    def ns(t: float) -> int:
        return int(round((wall0 + t) * 1e9))

    resource = {"service.name": "workbench", "service.instance.id": str(root.attributes["session.name"]),
                **root.attributes}
    provider = TracerProvider(resource=Resource.create(resource),
                              id_generator=_SeededIds(f"{rec.path.name}:{wall0}"))  # type: ignore[arg-type]
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(SCOPE, __version__)

    def emit(spec: SpanSpec, parent: Any) -> None:
        span = tracer.start_span(spec.name, context=parent, start_time=ns(spec.start_t), attributes=spec.attributes)
        for name, t, attrs in spec.events:
            span.add_event(name, attributes=attrs, timestamp=ns(t))
        if spec.error is not None:
            span.set_status(Status(StatusCode.ERROR, spec.error))
        ctx = trace.set_span_in_context(span)
        for child in spec.children:
            emit(child, ctx)
        span.end(end_time=ns(spec.end_t))

    emit(root, None)
    provider.shutdown()
    request = encode_spans(exporter.get_finished_spans())
    return json.dumps(_hex_ids(json_format.MessageToDict(request, use_integers_for_enums=True)),
                      separators=(",", ":"))


def recorded_params(rec: Recording) -> TurnParams | None:
    """The detector parameters in ``session.json``; None when there are none or they are a tapped bridge's own."""
    from workbench.core.params import TurnParams

    meta = rec.meta.get("params")
    if not isinstance(meta, dict):
        return None
    try:
        return TurnParams.from_dict(meta)
    except ValueError:  # not the detector's keys or ranges
        return None


def detector_turns(rec: Recording, params: TurnParams) -> list[Turn]:
    """The workbench detector's turns on the session clock: a replay over the recorded frames (else mic.flac)."""
    from workbench.analysis.replay import replay_recording

    if len(rec.of_kind("frame")):
        return replay_recording(rec, params)
    from dataclasses import replace

    from workbench.analysis.replay import RATE, detect_file
    from workbench.analysis.sweep import load_source

    return [replace(t, speech_start=t.speech_start + rec.mic_start_t, speech_end=t.speech_end + rec.mic_start_t,
                    activity_start=t.activity_start + rec.mic_start_t, activity_end=t.activity_end + rec.mic_start_t)
            for t in detect_file(load_source(rec).samples16k, RATE, params)]


def audacity_labels(rec: Recording, params: TurnParams) -> str:
    """The detector's turns as Audacity labels: speech start..end, seconds from mic.flac's first sample."""
    lines = []
    for i, t in enumerate(detector_turns(rec, params), 1):
        lines.append(f"{t.speech_start - rec.mic_start_t:.6f}\t{t.speech_end - rec.mic_start_t:.6f}\t"
                     f"turn {i} (ActivityEnd at {t.activity_end:.2f} s, {t.end_reason})")
    return "".join(line + "\n" for line in lines)


def export(rec: Recording, fmt: str, out: str | Path | None = None, params: TurnParams | None = None) -> Path:
    """Write ``rec`` in ``fmt`` to ``out`` (default: inside the recording, ``DEFAULT_NAMES``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(out) if out is not None else rec.path / DEFAULT_NAMES[fmt]
    if not path.parent.is_dir():
        raise ValueError(f"{path}: directory {path.parent} does not exist")
    if fmt == "otlp-json":
        text = otlp_json(rec) + "\n"
    else:
        from workbench.core.params import TurnParams

        if params is None:
            params = recorded_params(rec) or TurnParams()
        text = audacity_labels(rec, params)
    path.write_text(text, encoding="utf-8")
    return path


def register(subparsers: Any) -> None:
    """Add ``workbench export``."""
    p = subparsers.add_parser(
        "export", help="write a recording's turns as OpenTelemetry spans (OTLP JSON) or an Audacity label track",
        description="otlp-json: the session's turns (speech, ActivityStart..End, first audio, turn_complete, "
                    "reconnects) as OpenTelemetry spans in the OTLP JSON file format, for tracing tools. "
                    "audacity: the workbench detector's turns (replayed over the recorded frames) as an Audacity "
                    "label track beside mic.flac.",
        epilog="example: workbench export recordings/demo-20260101-120000 --format otlp-json")
    p.add_argument("recording", type=Path, help="recording directory")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("-o", "--out", type=Path, help="file to write (default: traces.otlp.jsonl or mic.labels.txt "
                                                  "inside the recording)")
    p.add_argument("--params", type=Path, help="audacity: detector parameters JSON (default: the recording's)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from workbench.store.paramfile import read_params
    from workbench.store.recording import RecordingError, load

    if not args.recording.exists():
        raise RecordingError(f"{args.recording}: no such recording directory")
    rec = load(args.recording)
    params = read_params(args.params) if args.params else None
    print(f"wrote {export(rec, args.format, args.out, params)}")
    return 0
