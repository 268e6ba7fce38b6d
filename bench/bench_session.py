"""End-of-turn latency: true speech end -> ActivityEnd on the wire, with and without frames stopping in silence.

Run:  .venv/bin/python bench/bench_session.py [--write] [--sessions N]

Each session plays the bundled candidate track (3 labelled answers) through a loopback WebRTC link
into ``bridge.run_session`` on uvloop (as ``workbench run`` runs), against ``workbench emulator`` in
its own process; ``--sessions`` with Opus DTX (frames stop in silence) and as many without.

Lateness = ActivityEnd on the wire (``send`` ``stage == "wire"``) − arrival of the last speech
frame before it (the track is digital silence between the labelled answers, so a speech frame is
one above -70 dBFS) − the silence window.  From the true end = ActivityEnd on the wire − the
labelled end of the answer on the session clock (media time placed by the least-late frame, i.e.
as if that audio had come without being held) − the silence window.  Tail missing = the labelled
end − the media end of the last speech frame that arrived before ActivityEnd (what the jitter
buffer kept from the turn).  Per-session CPU is measured by ``bench_load.py`` (a
process holding only the bridge side), not here, where the file players share the process.
``--write`` replaces the "## End-of-turn latency" section.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, ExternalEmulator, pct, publish, section  # noqa: E402

import workbench  # noqa: E402
from workbench import bridge, eventloop, live  # noqa: E402
from workbench.audio import load_mono, to_int16  # noqa: E402
from workbench.turns import TurnParams  # noqa: E402

TITLE = "End-of-turn latency"
LATE_TARGET_MS = 40.0
SPEECH_DB = -70.0


def first_sent_s(audio: np.ndarray, dtx: bool) -> float:
    """Source time of received pts 0: the first frame the player sends (under DTX, the first non-silent one)."""
    if not dtx:
        return 0.0
    frames = audio[: audio.size // 960 * 960].reshape(-1, 960)
    return float(np.flatnonzero(frames.any(axis=1))[0] * 0.02)


def end_of_turn_ms(rec: workbench.Recording, label_ends: list[float], pts0_s: float) -> dict[str, list[float]]:
    """Per labelled answer: ActivityEnd − true end − silence window, and how much of the answer's end was not
    received before that ActivityEnd (ms); ``pts0_s`` is the source time of received pts 0."""
    snd = rec.of_kind("send")
    ae = np.sort(snd[(snd["msg"] == "activity_end") & (snd["stage"] == "wire")]["t"].to_numpy())
    fr = rec.of_kind("frame")
    t, pts = fr["t"].to_numpy(), fr["pts_s"].to_numpy()
    offset = float(np.min(t - pts))  # session time of pts 0 on the least-held path
    speech = fr["level_db"].to_numpy() > SPEECH_DB
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    out: dict[str, list[float]] = {"from_end": [], "missing": []}
    for end in label_ends:
        end_session = end - pts0_s + offset
        after = ae[ae > end_session]
        if not after.size:
            continue
        got = speech & (t < after[0]) & (pts < end - pts0_s + 0.05)
        out["from_end"].append(float((after[0] - end_session - silence_s) * 1000))
        out["missing"].append(float((end - pts0_s - (pts[got].max() + 0.02)) * 1000) if got.any() else float("nan"))
    return out


def lateness_ms(rec: workbench.Recording) -> list[float]:
    """Per ActivityEnd on the wire: its time − the last speech frame's arrival before it − the silence window.

    The candidate track is digital silence between answers, so a speech frame is one above
    ``SPEECH_DB``; frames are timed by arrival on the session clock (what the bridge can act on).
    """
    snd = rec.of_kind("send")
    ae = np.sort(snd[(snd["msg"] == "activity_end") & (snd["stage"] == "wire")]["t"].to_numpy())
    fr = rec.of_kind("frame")
    speech_t = np.sort(fr[fr["level_db"] > SPEECH_DB]["t"].to_numpy())
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    out = []
    for t in ae:
        before = speech_t[speech_t < t]
        out.append(float((t - before[-1] - silence_s) * 1000) if before.size else float("nan"))
    return out


async def sessions(n: int, audio: np.ndarray, labels: list[tuple[float, float]]) -> dict[str, object]:
    """Run ``n`` sessions per DTX setting; lateness per turn (``labels`` counts the turns)."""
    res: dict[str, object] = {"late": {True: [], False: []}, "turns": {True: [0, 0], False: [0, 0]},
                              "from_end": {True: [], False: []}, "missing": {True: [], False: []}}
    shutil.rmtree(OUT / "session", ignore_errors=True)
    with ExternalEmulator() as emu:
        for i in range(n):
            for dtx in (True, False):
                settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.ssl_context())
                cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=dtx, name=f"bench-{i}-{dtx}")
                out = OUT / "session" / f"{'dtx' if dtx else 'nodtx'}-{i}"
                r = await bridge.run_session(audio, cfg, out)
                if r.error:
                    raise RuntimeError(f"session {out} failed: {r.error}")
                loaded = workbench.load(out)
                late = lateness_ms(loaded)
                res["late"][dtx] += late  # type: ignore[index]
                eot = end_of_turn_ms(loaded, [b for _a, b in labels], first_sent_s(audio, dtx))
                res["from_end"][dtx] += eot["from_end"]  # type: ignore[index]
                res["missing"][dtx] += eot["missing"]  # type: ignore[index]
                res["turns"][dtx][0] += sum(1 for x in late if x == x)  # type: ignore[index]
                res["turns"][dtx][1] += len(labels)  # type: ignore[index]
                print(f"session {out.name}: late {np.round(late)} from end {np.round(eot['from_end'])} "
                      f"missing {np.round(eot['missing'])}", file=sys.stderr)
    return res


def report(res: dict[str, object], n: int, params: TurnParams) -> str:
    lines = [
        f"{n} sessions with DTX and {n} without, each the bundled candidate track (24.7 s, 3 answers) + 1.5 s "
        f"tail and the greeting, energy detector (silence {params.silence_ms} ms), on uvloop; emulator in its own "
        "process.",
        "",
        "Lateness: ActivityEnd on the wire − arrival of the last speech frame before it − silence window (ms). "
        "From true end: ActivityEnd on the wire − the labelled end of the answer on the session clock (its media "
        "time placed by the least-late frame) − silence window (ms). Tail missing: labelled end − media end of the "
        "last speech frame received before ActivityEnd (ms). With DTX aiortc's jitter buffer alone holds the last "
        "~80 ms of each answer until the next burst (DESIGN.md §6); `workbench.ingest` releases it 50 ms after "
        "packets stop (`LoopDecoder.release`), so the last speech frame arrives that much later and the turn "
        "ends on its true media end.",
        "",
        "The target applies to the end of turn from the true end (what the user waits for); lateness after the "
        "last arrived frame is kept beside it for reference.",
        "",
        "| frames in silence | turns | from true end median | p95 | max | target p95 ≤ 40 ms | tail missing median "
        "| max | after last arrived frame median | p95 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtx in (True, False):
        late = [x for x in res["late"][dtx] if x == x]  # type: ignore[index]
        found, total = res["turns"][dtx]  # type: ignore[index]
        from_end = [x for x in res["from_end"][dtx] if x == x]  # type: ignore[index]
        missing = [x for x in res["missing"][dtx] if x == x]  # type: ignore[index]
        p95 = pct(from_end, 95)
        target = ("met" if p95 <= LATE_TARGET_MS else "MISSED") if dtx else "(target is for DTX)"
        lines.append(f"| {'stop (DTX)' if dtx else 'keep coming'} | {found}/{total} | {pct(from_end, 50):.0f} | "
                     f"{p95:.0f} | {max(from_end, default=float('nan')):.0f} | {target} | {pct(missing, 50):.0f} | "
                     f"{max(missing, default=float('nan')):.0f} | {pct(late, 50):.0f} | {pct(late, 95):.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--sessions", type=int, default=3, help="sessions per DTX setting")
    args = ap.parse_args()
    audio = to_int16(load_mono(CANDIDATE, 48_000))
    labels = [(float(a), float(b)) for a, b, *_ in
              (ln.split("\t") for ln in CANDIDATE.with_suffix(".labels.txt").read_text().splitlines() if ln.strip())]
    res = eventloop.run(sessions(args.sessions, audio, labels))
    text = section(TITLE, report(res, args.sessions, TurnParams()))
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
