"""The costs behind choices the code explains (the code says why; the figures live here, where they can be re-run).

Run:  .venv/bin/python bench/bench_code_figures.py [--write] [--rounds N]

- one ``events.jsonl`` line: orjson (what ``store.recording`` uses) against the stdlib's json encoder;
- ``mic.flac``: libsndfile's FLAC encoder fed one 20 ms frame per write against ``recording.AUDIO_BLOCK`` samples
  per write (what ``_FlacStream`` gathers);
- ``importlib.metadata`` looking up the versions ``session.json`` records (why ``recording`` caches them);
- ``ssl.create_default_context()``: one of the contexts (with the CA bundle) the SDK's client builds (why
  ``bridge.run_session`` builds the client on a thread).

CPU is this process's (``time.process_time``), the contenders in turn in each of ``--rounds`` rounds; medians, with
the spread of the rounds.  ``--write`` replaces the "## Costs behind the code's choices" section of BENCHMARKS.md.
"""

from __future__ import annotations

import importlib
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import arg_parser, publish, section  # noqa: E402

from workbench.core.events import Frame  # noqa: E402
from workbench.core.pcm import MIC_RATE  # noqa: E402
from workbench.store.recording import AUDIO_BLOCK  # noqa: E402

TITLE = "Costs behind the code's choices"
PACKAGES = ("workbench", "google-genai", "websockets", "aiortc", "av", "soxr", "numpy", "webrtcvad-wheels")
FRAME = 960  # 20 ms at 48 kHz


def cpu(fn: Callable[[], int]) -> float:
    """CPU seconds per unit of ``fn()`` (it returns how many units it did)."""
    t0 = time.process_time()
    n = fn()
    return (time.process_time() - t0) / n


def event_lines(encoder: str, n: int = 20_000) -> Callable[[], int]:
    event = Frame(t=12.345678, pts_s=12.3, n_samples=960, rate=MIC_RATE, level_db=-31.25).to_dict()

    def run() -> int:
        if encoder == "orjson":
            for _ in range(n):
                orjson.dumps(event) + b"\n"
        else:
            for _ in range(n):
                json.dumps(event).encode() + b"\n"
        return n

    return run


def flac_frames(block: int, seconds: float = 20.0) -> Callable[[], int]:
    audio = (np.random.default_rng(0).standard_normal(int(seconds * MIC_RATE)) * 3000).astype(np.int16)

    def run() -> int:
        with tempfile.TemporaryDirectory() as tmp, sf.SoundFile(os.path.join(tmp, "mic.flac"), "w", MIC_RATE, 1,
                                                               format="FLAC", subtype="PCM_16") as f:
            for i in range(0, audio.size, block):
                f.write(audio[i : i + block])
        return audio.size // FRAME  # per 20 ms frame of audio

    return run


def metadata_lookups() -> int:
    from importlib import metadata

    importlib.invalidate_caches()
    for name in PACKAGES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return 1


def ssl_contexts(n: int = 5) -> Callable[[], int]:
    def run() -> int:
        for _ in range(n):
            ssl.create_default_context()
        return n

    return run


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cases: dict[str, tuple[Callable[[], int], float, str]] = {
        "events.jsonl line, orjson (the recorder's)": (event_lines("orjson"), 1e6, "µs an event"),
        "events.jsonl line, json": (event_lines("json"), 1e6, "µs an event"),
        f"mic.flac, {AUDIO_BLOCK}-sample writes (the recorder's)": (flac_frames(AUDIO_BLOCK), 1e6,
                                                                  "µs per 20 ms frame of audio"),
        "mic.flac, one write per 20 ms frame": (flac_frames(FRAME), 1e6, "µs per 20 ms frame of audio"),
        f"importlib.metadata, the {len(PACKAGES)} versions session.json records": (metadata_lookups, 1e3, "ms"),
        "ssl.create_default_context() (the SDK's client builds several)": (ssl_contexts(), 1e3, "ms each"),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, (fn, _, _) in cases.items():
            runs[name].append(cpu(fn))
    load_after = os.getloadavg()
    rows = ["| what | CPU | rounds |", "|---|---|---|"]
    for name, (_, scale, unit) in cases.items():
        v = np.array(runs[name]) * scale
        rows.append(f"| {name} | {np.median(v):.2f} {unit} | {v.min():.2f}–{v.max():.2f} |")
    body = (f"{args.rounds} rounds, the cases in turn in each round; process CPU time; medians, with the spread of the "
            f"rounds. Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
            f"{os.cpu_count()} cores.\n\n" + "\n".join(rows) + "\n\n"
            "Where the code relies on these: `store/recording.py` (orjson for event lines, `AUDIO_BLOCK`, the cached "
            "package versions), `io/bridge.py` (the SDK client built on a thread).\n\n"
            "Figures the code's docstrings used to quote live in the sections that measured them: uvloop against "
            "asyncio's loop (`io/eventloop.py`) and decoding on the loop (`io/loopdecode.py`) in \"Per-session CPU, "
            "the earlier run\"; Smart Turn's errors and cost (`core/endturn.py`) in \"End of turn: reading the "
            "figures\" and \"End-of-turn model and the event loop\".\n")
    publish(TITLE, section(TITLE, body), args.write)


if __name__ == "__main__":
    main()
