"""Grid search of turn-detector settings over labelled audio, in parallel, into a tidy table.

Every parameter set runs the one ``TurnDetector`` through ``detect_file`` (the live rules on a file's clock,
``TurnDetector.feed``): it scores the whole buffer at once and judges window by window only where something can
happen, so a set costs tens of milliseconds per 10 minutes with the energy scorer and the results are the live
detector's decisions by construction (tests compare them with a call per frame).

The eot-bench convention (LiveKit's end-of-turn benchmark), for audio with labelled thinking pauses
(``<stem>.pauses.txt`` beside the file, see ``workbench.store.speechset``): per setting, the *false cut-off
rate* (pauses, not the end, inside which an ActivityEnd went out) and the *end-of-turn latency* (true
end of speech -> ActivityEnd, the silence window included: the wait the candidate feels).
``eot_summary`` reads the trade-off per policy the way eot-bench does: the lowest false cut-off rate
within latency budgets of 300, 500 and 1000 ms, and the lowest latency at <= 5 % false cut-offs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.analysis.replay import RATE, Turn, detect_file, evaluate, to_mono_16k
from workbench.core.params import TurnParams
from workbench.store.speechset import Pause, pauses_beside, read_pauses

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

_EPS = 1e-6  # the detector's tolerance on window and tick times, seconds
METRICS = ["turns", "found", "split", "merged", "missed", "false_turns", "lateness_median_ms", "lateness_p95_ms",
           "pauses", "cutoffs", "hesitations", "cutoffs_hesitation", "boundaries", "cutoffs_boundary",
           "cutoffs_other", "ends", "latency_median_ms", "latency_p95_ms"]
EOT_METRICS = METRICS[8:]
LATENCY_BUDGETS_MS = (300, 500, 1000)
CUTOFF_TARGET = 0.05  # eot-bench's operating point: latency at 5 % false cut-offs
PARAM_NAMES = [f.name for f in dataclasses.fields(TurnParams)]
_TEXT_PARAMS = {f.name for f in dataclasses.fields(TurnParams) if f.type == "str"}  # scorer, endpointing, end_model


# --- sources and labels -----------------------------------------------------------------------


@dataclass
class Source:
    """One audio under test: 16 kHz mono samples and, when labelled, the true answers (start, end s)."""

    name: str
    samples16k: np.ndarray
    truth: list[tuple[float, float]] | None = None
    pauses: list[Pause] | None = None  # thinking pauses inside the answers (eot-bench columns)


def read_labels(path: str | os.PathLike[str]) -> list[tuple[float, float]]:
    """Read ``start<TAB>end[<TAB>label]`` lines (Audacity's label format); one-line errors."""
    spans: list[tuple[float, float]] = []
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{p}: cannot read labels ({exc.strerror})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            a, b = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{p} line {i}: expected 'start<TAB>end<TAB>label' in seconds, got {line!r}") from None
        if not (math.isfinite(a) and math.isfinite(b) and b > a >= 0):
            raise ValueError(f"{p} line {i}: need 0 <= start < end, got {a:g}..{b:g}")
        spans.append((a, b))
    return spans


def labels_beside(path: str | os.PathLike[str]) -> Path | None:
    """``answers.flac`` -> ``answers.labels.txt`` next to it, if present."""
    p = Path(path)
    cand = p.with_name(p.stem + ".labels.txt") if p.suffix else p / "labels.txt"
    return cand if cand.is_file() else None


def load_source(src: Any, labels: Any = None, name: str | None = None, pauses: Any = None) -> Source:
    """Audio file path, recording directory, ``Recording``, ``(samples, rate)`` or a ``Source``.

    Recordings are replayed from ``mic.flac`` as a file: times are mic media time (add
    ``mic_start_t`` for the session clock).  ``labels``: a path, a list of spans, or None to
    look for ``<stem>.labels.txt`` beside an audio file.  ``pauses``: a ``.pauses.txt`` path, a list of
    ``speechset.Pause``, or None to look for ``<stem>.pauses.txt`` beside an audio file.
    """
    from workbench.store.recording import Recording, load

    if isinstance(src, Source):
        return src
    if isinstance(src, tuple) and len(src) == 2:
        samples, rate = src
        x = to_mono_16k(np.asarray(samples), int(rate))
        name = name or "samples"
    elif isinstance(src, Recording):
        x = to_mono_16k(src.mic, src.mic_rate)
        name = name or src.path.name
    else:
        p = Path(src)
        if p.is_dir():
            rec = load(p)
            x = to_mono_16k(rec.mic, rec.mic_rate)
        else:
            from workbench.store.audiofile import load_mono

            x = load_mono(p, RATE)
            if labels is None:
                labels = labels_beside(p)
            if pauses is None:
                pauses = pauses_beside(p)
        name = name or p.name
    if x.size == 0:
        raise ValueError(f"{name}: no audio to replay")
    truth = None
    if labels is not None:
        truth = [tuple(map(float, s)) for s in labels] if isinstance(labels, list) else read_labels(labels)
    if pauses is not None and not isinstance(pauses, list):
        pauses = read_pauses(pauses)
    return Source(name=name, samples16k=x, truth=truth, pauses=pauses)  # type: ignore[arg-type]


def evaluate_eot(turns: list[Turn], answers: Sequence[tuple[float, float]], pauses: Sequence[Pause]) -> dict[str, Any]:
    """eot-bench's two measures for one audio: false cut-offs and end-of-turn latency.

    A pause is *cut off* when an ActivityEnd falls inside it (``start <= t < end``): the answer was
    not over.  ``cutoffs_other``: ActivityEnds inside an answer but in no labelled pause (a natural
    gap).  Latency, per answer: the first ActivityEnd from its true end (``end - 50 ms``, a faint
    tail) until the next answer starts, minus the true end, in ms; an answer with none (merged into
    the next, or never ended) has no latency and is not in ``ends``.
    """
    ends = sorted(t.activity_end for t in turns)
    cut = {"hesitation": 0, "boundary": 0}
    total = {"hesitation": 0, "boundary": 0}
    in_pause = 0
    for p in pauses:
        total[p.kind] = total.get(p.kind, 0) + 1
        i = int(np.searchsorted(ends, p.start - _EPS, side="left"))
        if i < len(ends) and ends[i] < p.end - _EPS:
            cut[p.kind] = cut.get(p.kind, 0) + 1
    for t in ends:
        if any(p.start - _EPS <= t < p.end - _EPS for p in pauses):
            in_pause += 1
    inside = sum(1 for t in ends for a, b in answers if a < t < b - 0.05)
    latencies: list[float] = []
    for j, (_a, b) in enumerate(answers):
        nxt = answers[j + 1][0] if j + 1 < len(answers) else math.inf
        i = int(np.searchsorted(ends, b - 0.05, side="left"))
        if i < len(ends) and ends[i] < nxt:
            latencies.append((ends[i] - b) * 1000)
    lat = np.asarray(latencies)
    return {
        "pauses": len(pauses), "cutoffs": sum(cut.values()),
        "hesitations": total["hesitation"], "cutoffs_hesitation": cut["hesitation"],
        "boundaries": total["boundary"], "cutoffs_boundary": cut["boundary"],
        "cutoffs_other": inside - in_pause, "ends": len(latencies), "latency_ms": latencies,
        "latency_median_ms": float(np.median(lat)) if lat.size else None,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
    }


# --- the grid ---------------------------------------------------------------------------------


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["silence_ms=300,500", "start_db=-45:-35:5"]`` -> grid dict; ``a:b:step`` is inclusive."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ValueError(f"bad --grid {spec!r}: expected NAME=V1,V2,... or NAME=START:STOP:STEP")
        if key not in PARAM_NAMES:
            raise ValueError(f"bad --grid {spec!r}: unknown parameter {key!r}; known: {', '.join(PARAM_NAMES)}")
        if key in grid:
            raise ValueError(f"bad --grid {spec!r}: {key} given twice")
        grid[key] = _parse_values(key, values.strip(), spec)
    if not grid:
        raise ValueError("no --grid given: add e.g. --grid silence_ms=300,500,700")
    return grid


def _parse_values(key: str, text: str, spec: str) -> list[Any]:
    if key in _TEXT_PARAMS:
        return [v.strip() for v in text.split(",") if v.strip()]
    try:
        if ":" in text:
            a, b, step = (float(v) for v in text.split(":"))
            if step <= 0 or b < a or (b - a) / step > 10_000:
                raise ValueError
            return [round(a + i * step, 9) for i in range(int(math.floor((b - a) / step + 1e-9)) + 1)]
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"bad --grid {spec!r}: values must be numbers like 300,500 or START:STOP:STEP") from None


def expand_grid(grid: Mapping[str, Iterable[Any]], base: TurnParams | None = None) -> list[TurnParams]:
    """Every combination of ``grid`` over ``base``; an invalid combination is a one-line error.

    When ``start_db`` varies and ``stop_db`` does not, ``stop_db`` follows it as the CLI does
    (``min(base.stop_db, start_db - 5)``), so a start threshold grid never trips the stop <= start rule.
    """
    base = base or TurnParams()
    for key in grid:
        if key not in PARAM_NAMES:
            raise ValueError(f"unknown parameter {key!r} in grid; known: {', '.join(PARAM_NAMES)}")
    keys = list(grid)
    values = [list(v) for v in grid.values()]
    for key, vals in zip(keys, values, strict=True):
        if not vals:
            raise ValueError(f"grid {key!r} has no values")
    out: list[TurnParams] = []
    for combo in itertools.product(*values):
        d = {**base.to_dict(), **dict(zip(keys, combo, strict=True))}
        if "start_db" in grid and "stop_db" not in grid:
            d["stop_db"] = min(base.stop_db, float(d["start_db"]) - 5.0)
        try:
            out.append(TurnParams.from_dict(d))
        except ValueError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
            raise ValueError(f"grid combination {shown}: {exc}") from None
    return out


# --- running it ---------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(sources: list[Source]) -> None:
    """Each worker sees the audio once (and one memoised end model, built on first use).

    With the ``fork`` start method (Linux's default up to Python 3.13) the sources are inherited, not pickled:
    the workers share the parent's pages copy-on-write instead of each holding a copy.  Under ``spawn`` or
    ``forkserver`` each worker unpickles its own copy."""
    _WORKER["sources"] = sources
    _WORKER["caches"] = {}


class SweepError(ValueError):
    """A parameter set failed in a worker; the message names the set and the cause in one line."""


def _run_params(params: TurnParams) -> list[dict[str, Any]]:
    try:
        return _rows(params, _WORKER["sources"], _WORKER["caches"])
    except Exception as exc:  # noqa: BLE001 - any worker failure becomes one line naming the set
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"sweep worker failed on {describe(params)}: {msg}") from None


def describe(params: TurnParams) -> str:
    """The settings of ``params`` that differ from the defaults, as ``name=value`` (``defaults`` if none)."""
    d0 = TurnParams().to_dict()
    diff = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.to_dict().items() if d0[k] != v]
    return ", ".join(diff) or "defaults"


def _rows(params: TurnParams, sources: list[Source], caches: dict[Any, Any]) -> list[dict[str, Any]]:
    """The rows of one set.  ``caches`` (per worker): one memoised end model, so settings that differ only after
    the model's scoring (threshold, wait) do not score the same audio twice."""
    rows = []
    model = None
    if params.end_model != "none":
        from workbench.core.endturn import MemoEndModel
        from workbench.store.models import make_end_model

        key = ("end_model", params.end_model)
        if key not in caches:
            caches[key] = MemoEndModel(make_end_model(params.end_model))
        model = caches[key]
    for src in sources:
        turns = detect_file(src.samples16k, RATE, params, end_model=model)
        row: dict[str, Any] = {**params.to_dict(), "policy": params.policy, "source": src.name, "turns": len(turns)}
        if src.truth is not None:
            ev = evaluate(turns, src.truth, params.silence_ms)
            row.update({k: ev[k] for k in METRICS[:8] if k != "turns"})
            if src.pauses is not None:
                eot = evaluate_eot(turns, src.truth, src.pauses)
                row.update({k: eot[k] for k in EOT_METRICS})
        rows.append(row)
    return rows


def _is_spans(x: Any) -> bool:
    """A list of (start, end[, label]) answer spans, as opposed to a list of per-source labels."""
    return isinstance(x, list | tuple) and all(
        isinstance(i, list | tuple) and len(i) >= 2 and isinstance(i[0], int | float) for i in x)


def sweep(sources: Any, grid: Mapping[str, Iterable[Any]], labels: Any = None, jobs: int | None = None,
          progress: bool = True, base: TurnParams | None = None, scheduler: str | None = None) -> pd.DataFrame:
    """Replay every parameter combination over every source; one row per (params, source).

    ``sources``: one or a list of audio paths / recordings / ``(samples, rate)`` / ``Source``.
    ``labels``: None (look beside each file), a path or span list (one source), or a list aligned
    with ``sources``.  ``jobs``: worker processes (default: all cores; 1 runs in this process).
    Unlabelled sources get NaN in the evaluation columns, sources without pauses in the eot columns.
    ``scheduler``: a ``dask.distributed`` scheduler address (``tcp://host:8786``) to run the grid on
    that cluster instead of local processes; same rows, same order.  A failing set raises ``SweepError``.
    """

    src_list = list(sources) if isinstance(sources, list | tuple) and not _is_samples(sources) else [sources]
    if not src_list:
        raise ValueError("sweep needs at least one source")
    if labels is None:
        label_list: list[Any] = [None] * len(src_list)
    elif isinstance(labels, str | os.PathLike) or _is_spans(labels):
        if len(src_list) > 1:
            raise ValueError("give one labels entry per source (a list) when sweeping several sources")
        label_list = [labels]
    else:
        label_list = list(labels)
        if len(label_list) != len(src_list):
            raise ValueError(f"{len(label_list)} labels for {len(src_list)} sources")
    loaded = [load_source(s, lab) for s, lab in zip(src_list, label_list, strict=True)]
    param_sets = expand_grid(grid, base)
    return _sweep(loaded, param_sets, jobs, progress, scheduler)


def _sweep(loaded: list[Source], param_sets: list[TurnParams], jobs: int | None, progress: bool,
           scheduler: str | None) -> pd.DataFrame:
    import pandas as pd
    from tqdm.auto import tqdm

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(param_sets)))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(param_sets), desc="sweep", unit="set", disable=not progress)
    try:
        if scheduler is not None:
            from workbench.analysis.distributed import run_on_cluster

            for result in run_on_cluster(scheduler, loaded, param_sets, on_done=bar.update):
                rows += result
        elif jobs == 1:
            _init_worker(loaded)
            for ps in param_sets:
                rows += _run_params(ps)
                bar.update()
        else:
            chunk = max(1, len(param_sets) // (jobs * 4))
            with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(loaded,)) as ex:
                for result in ex.map(_run_params, param_sets, chunksize=chunk):
                    rows += result
                    bar.update()
    except BrokenProcessPool as exc:
        raise SweepError(f"a sweep worker process died ({exc}); rerun with --jobs 1 to see why") from None
    finally:
        bar.close()
    df = pd.DataFrame(rows)
    for col in METRICS:
        if col not in df:
            df[col] = np.nan
    return df[[*PARAM_NAMES, "policy", "source", *METRICS]]


def _is_samples(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], np.ndarray)


# --- reading the results ------------------------------------------------------------------------


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per parameter set, summed over sources: ``errors`` = split + merged + missed + false turns.

    ``lateness_ms`` is the mean of the per-source medians (sources weigh equally); ``end_wait_ms`` is
    ``lateness_ms + silence_ms``, the median wait from an answer's true end to ActivityEnd, so the
    trade-off ``silence_ms`` controls shows (lateness alone is about 0 for every window).  Sets are
    sorted by errors, then end wait (to 0.1 ms: float noise is no reason to prefer a set), then grid
    order, which is the tie-break ``best`` states; ``pareto`` marks the sets no other set beats on
    both errors and end wait.
    """
    varied = [c for c in PARAM_NAMES if df[c].nunique(dropna=False) > 1] or ["silence_ms"]
    g = df.groupby([*PARAM_NAMES, "policy"], sort=False, dropna=False)
    counts = ["turns", "found", "split", "merged", "missed", "false_turns", "pauses", "cutoffs",
              "cutoffs_hesitation", "cutoffs_boundary", "hesitations", "boundaries", "cutoffs_other", "ends"]
    out = g[[c for c in counts if c in df]].sum(min_count=1)
    out["lateness_ms"] = g["lateness_median_ms"].mean()
    out["lateness_p95_ms"] = g["lateness_p95_ms"].max()
    out["errors"] = out[["split", "merged", "missed", "false_turns"]].sum(axis=1, min_count=1)
    if "pauses" in out:
        out["false_cutoff_rate"] = out["cutoffs"] / out["pauses"].where(out["pauses"] > 0)
        out["cutoff_rate_hesitation"] = out["cutoffs_hesitation"] / out["hesitations"].where(out["hesitations"] > 0)
        out["cutoff_rate_boundary"] = out["cutoffs_boundary"] / out["boundaries"].where(out["boundaries"] > 0)
        out["latency_ms"] = g["latency_median_ms"].mean()
        out["latency_p95_ms"] = g["latency_p95_ms"].max()
    out = out.reset_index()
    out["end_wait_ms"] = out["lateness_ms"] + out["silence_ms"]
    out["pareto"] = _pareto(out["errors"].to_numpy(float), _key(out["end_wait_ms"]))
    out.attrs["varied"] = varied
    return _ordered(out, "errors", "end_wait_ms")


def _key(values: pd.Series) -> np.ndarray:
    """A metric as a sort/compare key: rounded to 0.1 (ms or %), NaN last."""
    v = values.to_numpy(float).round(1)
    return np.where(np.isfinite(v), v, np.inf)


def _ordered(s: pd.DataFrame, first: str, then: str) -> pd.DataFrame:
    """Rows by ``first``, then ``then`` (both as ``_key``), then their order in the grid (a stable sort)."""
    order = np.lexsort((np.arange(len(s)), _key(s[then]), _key(s[first])))
    out = s.iloc[order].reset_index(drop=True)
    out.attrs.update(s.attrs)
    return out


def _pareto(errors: np.ndarray, wait: np.ndarray) -> np.ndarray:
    ok = np.isfinite(errors) & np.isfinite(wait)
    front = np.zeros(errors.shape[0], bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (errors <= errors[i]) & (wait <= wait[i]) & ((errors < errors[i]) | (wait < wait[i]))
        front[i] = not dominated.any()
    return front


def has_eot(s: pd.DataFrame) -> bool:
    """True when a summary holds eot-bench columns with numbers (labelled pauses were swept)."""
    return "false_cutoff_rate" in s and bool(s["false_cutoff_rate"].notna().any())


def eot_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per policy (scorer, dynamic window, end model): eot-bench's reading of its curve.

    ``cutoff_at_<B>ms``: the lowest false cut-off rate among the policy's settings whose median
    end-of-turn latency is within B ms (NaN: no setting that fast).  ``latency_at_5pct_ms``: the
    lowest median latency among settings with at most 5 % false cut-offs (NaN: none that careful).
    ``settings``: how many points the curve has.
    """
    import pandas as pd

    s = summary(df)
    if not has_eot(s):
        raise ValueError("no labelled pauses in the sweep: eot columns need <stem>.pauses.txt beside the audio")
    rows = []
    for policy, g in s.dropna(subset=["false_cutoff_rate", "latency_ms"]).groupby("policy", sort=False):
        row: dict[str, Any] = {"policy": policy, "settings": len(g)}
        for b in LATENCY_BUDGETS_MS:
            ok = g[g["latency_ms"] <= b]
            row[f"cutoff_at_{b}ms"] = float(ok["false_cutoff_rate"].min()) if len(ok) else np.nan
        ok = g[g["false_cutoff_rate"] <= CUTOFF_TARGET + 1e-12]
        row["latency_at_5pct_ms"] = float(ok["latency_ms"].min()) if len(ok) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def best(df: pd.DataFrame, budget_ms: float = 1000) -> pd.Series:
    """The best setting; ``best_rule`` says the rule in words (the trade-off plot writes it on the figure).

    With labelled pauses: the fewest false cut-offs among settings whose median end-of-turn latency
    is within ``budget_ms``, then the lowest latency (none within budget: the lowest latency), so a
    window that waits seconds is not "best" for cutting nobody off.  Without: fewest turn errors,
    then the shortest end wait (a Pareto-front member).  Ties on both (to 0.1 % / 0.1 ms): the first
    in grid order.
    """
    s = summary(df)
    if s["errors"].isna().all():
        raise ValueError("no labelled source in the sweep: best() needs labels (start<TAB>end lines)")
    return _best(s, budget_ms)[0]


def _best(s: pd.DataFrame, budget_ms: float) -> tuple[pd.Series, pd.DataFrame]:
    """The best row of a summary and the rows it ties with (itself included), by ``best``'s rule."""
    if has_eot(s):
        ok = s.dropna(subset=["false_cutoff_rate", "latency_ms"])
        within = ok[ok["latency_ms"] <= budget_ms]
        if len(within):
            pick = _ordered(within.assign(cutoff_pct=100 * within["false_cutoff_rate"]), "cutoff_pct", "latency_ms")
            keys = ["cutoff_pct", "latency_ms"]
        else:
            pick = _ordered(ok, "latency_ms", "latency_ms")
            keys = ["latency_ms"]
    else:
        pick, keys = s, ["errors", "end_wait_ms"]
    top = pick.iloc[0]
    tied = pick[np.all([_key(pick[k]) == _key(pick[k].iloc[:1])[0] for k in keys], axis=0)]
    return top, tied


def best_rule(df: pd.DataFrame, budget_ms: float = 1000) -> str:
    """``best``'s choice in words: the rule that picked it and how a tie was broken."""
    return _rule(summary(df), budget_ms)


def _rule(s: pd.DataFrame, budget_ms: float) -> str:
    top, tied = _best(s, budget_ms)
    if has_eot(s):
        within = bool(top["latency_ms"] <= budget_ms)
        rule = (f"best: the fewest false cut-offs among settings with median latency <= {budget_ms:g} ms, then the "
                "lowest latency" if within else f"best: no setting within {budget_ms:g} ms median latency, so the "
                "lowest latency")
    else:
        rule = "best: the fewest turn errors, then the shortest end wait"
    if len(tied) > 1:
        varied = [k for k in s.attrs["varied"] if tied[k].nunique(dropna=False) > 1]
        rule += (f"; {len(tied)} sets tie on both, the first in grid order is taken ("
                 + ", ".join(f"{k}={_fmt(top[k])}" for k in varied) + ")")
    return rule


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float | np.floating) else str(v)


def to_params(row: Mapping[str, Any]) -> TurnParams:
    """A summary or sweep row back to ``TurnParams`` (for ``--params`` files)."""
    return TurnParams.from_dict({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
                                 if k in PARAM_NAMES})


MARKERS = "osD^vP*X"  # one shape per value of a second varied parameter / per policy


def tradeoff_plot(df: pd.DataFrame, ax: Any = None, budget_ms: float = 1000) -> Figure:
    """The trade-off of the sweep, every parameter set drawn, the best one starred and why it won written below.

    With labelled pauses (eot-bench): false cut-off rate against median end-of-turn latency, one
    curve per policy (its Pareto front joined, the settings off it hollow), the 5 % line and the
    latency budgets marked, the pauses cut off counted on the right.  Without: end wait (silence
    window + lateness) against turn errors, colour by ``silence_ms``, shape by a second varied
    parameter; sets at the same point are spread sideways (errors are whole numbers, so the
    spread cannot be misread), and the Pareto front is drawn as a step.  ``budget_ms`` as in ``best``.
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    s = summary(df)
    if ax is None:
        fig = Figure(figsize=(10, 5.4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if has_eot(s):
        _eot_plot(s, ax, budget_ms)
    elif s.dropna(subset=["errors", "end_wait_ms"]).empty:
        ax.text(0.5, 0.5, "no labelled results to plot", ha="center", va="center", transform=ax.transAxes)
        return fig
    else:
        _errors_plot(s, ax)
    # Below the axes, in the layout: why the starred set won (the rule and its tie-break).
    rule = textwrap.fill(_rule(s, budget_ms) + ".", width=int(fig.get_figwidth() * 15))
    fig.supxlabel(rule, x=0.01, ha="left", fontsize="small", style="italic")
    plt.close("all")
    return fig


def _coinciding(x: np.ndarray, y: np.ndarray, y_tol: float) -> list[list[int]]:
    """Indices of the points that would be drawn on one another (same x, y within ``y_tol``), grid order kept."""
    groups: list[list[int]] = []
    for i in np.lexsort((y, x)):
        g = groups[-1] if groups else None
        if g is not None and x[g[0]] == x[i] and abs(y[i] - y[g[0]]) <= y_tol:
            g.append(int(i))
        else:
            groups.append([int(i)])
    return [sorted(g) for g in groups]


def _errors_plot(s: pd.DataFrame, ax: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ok = s.dropna(subset=["errors", "end_wait_ms"])
    varied = s.attrs["varied"]
    color_by = "silence_ms" if "silence_ms" in varied else varied[0]
    others = [k for k in varied if k != color_by and ok[k].nunique() <= len(MARKERS)]
    shape_by = others[0] if others else None
    errors, wait = ok["errors"].to_numpy(float), ok["end_wait_ms"].to_numpy(float)
    groups = _coinciding(errors, wait, 0.015 * max(float(np.ptp(wait)), 1.0))  # closer: markers would overlap
    group_max = max(len(g) for g in groups)
    step = min(0.035 * max(float(np.ptp(errors)), 4.0), 0.7 / max(group_max - 1, 1))  # within +-0.35 of the count
    x = errors.copy()
    for g in groups:
        x[g] += (np.arange(len(g)) - (len(g) - 1) / 2) * step
    codes = pd_codes(ok[color_by])
    shapes = pd_codes(ok[shape_by]) if shape_by else np.zeros(len(ok), int)
    sc = None
    for k in np.unique(shapes):
        m = shapes == k
        sc = ax.scatter(x[m], wait[m], c=codes[m], cmap="viridis", vmin=0, vmax=max(codes.max(), 1), s=46,
                        marker=MARKERS[k], edgecolors="black", linewidths=0.4, zorder=3)
    front = ok["pareto"].to_numpy(bool)
    handles: list[Any] = []
    if front.any():
        order = np.argsort(errors[front], kind="stable")
        fx, fy = errors[front][order], wait[front][order]
        ax.scatter(x[front], wait[front], s=150, facecolors="none", edgecolors="tab:red", linewidths=1.3, zorder=2)
        if len(fx) > 1:  # the step: fewer errors only by waiting longer
            ax.plot(fx, fy, color="tab:red", lw=1.2, drawstyle="steps-post", alpha=0.7, zorder=1)
        handles.append(Line2D([], [], color="tab:red", lw=1.2 if len(fx) > 1 else 0, marker="o", mfc="none",
                              ms=12, label=f"Pareto front, {int(front.sum())} sets:\nnone has fewer errors "
                              "and a shorter wait"))
    top, _ = _best(s, 1000)
    i = int(np.flatnonzero(ok.index == top.name)[0])
    star = ax.plot([x[i]], [wait[i]], marker="*", color="gold", mec="black", ms=20, ls="none", zorder=4)[0]
    star.set_label("best: " + ", ".join(f"{k}={_fmt(top[k])}" for k in varied))
    handles.append(star)
    uniq = sorted(ok[color_by].unique())
    if len(uniq) <= 12:  # a few values: named in the legend, else a colour bar
        for k, v in enumerate(uniq):
            handles.append(Line2D([], [], ls="none", marker="s", ms=8, mec="black", mew=0.4, label=f"{color_by} = "
                                  f"{_fmt(v)}", color=sc.cmap(sc.norm(k))))
    else:
        ax.figure.colorbar(sc, ax=ax, pad=0.01, label=color_by)
    if shape_by:
        for k, v in enumerate(sorted(ok[shape_by].unique())):
            handles.append(Line2D([], [], ls="none", marker=MARKERS[k], color="grey", mec="black", ms=7,
                                  label=f"{shape_by} = {_fmt(v)}"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = float(errors.min()), float(errors.max())
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.set_xlabel("turn errors (split + merged + missed + false turns, summed over sources)")
    ax.set_ylabel("end wait, median (ms: true end of answer to ActivityEnd)")
    ax.set_title(f"Sweep trade-off: all {len(ok)} parameter sets")
    if group_max > 1:
        ax.annotate("sets with the same result are spread sideways (up to " f"{group_max} at one point)",
                    xy=(0, 0), xycoords="axes fraction", xytext=(4, 4), textcoords="offset points",
                    fontsize="small", color="grey")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", borderaxespad=0)


def _eot_plot(s: pd.DataFrame, ax: Any, budget_ms: float) -> None:
    from matplotlib.ticker import MaxNLocator

    ok = s.dropna(subset=["false_cutoff_rate", "latency_ms"])
    stacked = hollow = False
    for i, (policy, g) in enumerate(ok.groupby("policy", sort=False)):
        color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
        g = g.sort_values(["latency_ms", "false_cutoff_rate"])
        front = g[g["false_cutoff_rate"] < g["false_cutoff_rate"].cummin().shift(fill_value=np.inf)]
        off = g.drop(front.index)
        ax.plot(front["latency_ms"], 100 * front["false_cutoff_rate"], "-", marker=marker, ms=6, lw=1.6, color=color,
                label=f"{policy}: front, {len(front)} of {len(g)} settings", zorder=3)
        if len(off):
            hollow = True
            ax.scatter(off["latency_ms"], 100 * off["false_cutoff_rate"], s=36, marker=marker, facecolors="none",
                       edgecolors=color, linewidths=1.2, zorder=3)
        same = g.groupby([g["latency_ms"].round(0), (100 * g["false_cutoff_rate"]).round(1)]).size()
        for (lat, pct), count in same[same > 1].items():  # settings with one result: one marker, counted
            ax.annotate(f"×{count}", xy=(lat, pct), xytext=(5, 4), textcoords="offset points", fontsize="small",
                        color=color)
            stacked = True
    if hollow:
        ax.scatter([], [], s=36, marker="o", facecolors="none", edgecolors="grey", label="off the front (hollow)")
    ax.axhline(100 * CUTOFF_TARGET, color="grey", ls=":", lw=1)
    ax.annotate(f"{100 * CUTOFF_TARGET:g} % target", xy=(1, 100 * CUTOFF_TARGET), xycoords=("axes fraction", "data"),
                xytext=(-4, 3), textcoords="offset points", ha="right", fontsize="small", color="grey")
    if stacked:
        ax.annotate("×n: n settings with the same result", xy=(0, 0), xycoords="axes fraction", xytext=(4, 4),
                    textcoords="offset points", fontsize="small", color="grey")
    for b in LATENCY_BUDGETS_MS:
        ax.axvline(b, color="grey", ls="--", lw=0.8, alpha=0.6)
        ax.annotate(f"{b} ms" + (" budget" if b == budget_ms else ""), xy=(b, 1), xycoords=("data", "axes fraction"),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize="small",
                    color="grey")
    top, _ = _best(s, budget_ms)
    ax.plot([top["latency_ms"]], [100 * top["false_cutoff_rate"]], marker="*", color="gold", mec="black", ms=20,
            ls="none", zorder=4, label="best: " + ", ".join(f"{k}={_fmt(top[k])}" for k in s.attrs["varied"]))
    ax.set_xlabel("end-of-turn latency, median (ms from true end of speech to ActivityEnd, window included)")
    ax.set_ylabel("false cut-off rate (% of thinking pauses)")
    pauses = ok["pauses"].unique()
    n = int(pauses[0]) if len(pauses) == 1 else 0
    each = f", {n} pauses per setting" if n else ""
    ax.set_title(f"False cut-offs vs latency: {len(ok)} settings{each}", pad=14)
    ax.set_ylim(-4, 104)
    if n:  # the same scale as counts, whole numbers
        right = ax.secondary_yaxis("right", functions=(lambda p: p * n / 100, lambda c: c * 100 / n))
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylabel(f"pauses cut off (of {n})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small", framealpha=0.9)


def pd_codes(values: pd.Series) -> np.ndarray:
    """Rank codes of a column, so any parameter (numbers or scorer names) can colour points."""
    uniq = {v: i for i, v in enumerate(sorted(values.unique()))}
    return values.map(uniq).to_numpy()


# --- CLI ----------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``workbench sweep``."""
    p = subparsers.add_parser(
        "sweep", help="grid-search turn-detector settings over labelled audio",
        description="Replay every combination of --grid values over the given audio files or recordings "
                    "(in parallel), score each against the labels beside each file (<stem>.labels.txt: "
                    "start<TAB>end<TAB>label lines) and print the best settings.",
        epilog="example: workbench sweep recordings/candidate.flac --grid silence_ms=300:900:100 "
               "--grid start_db=-45,-40 -o sweep.csv --plot sweep.png --best-params best.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="audio files (any rate) or recording directories")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2|START:STOP:STEP",
                   help=f"a parameter and its values; repeat per parameter ({', '.join(PARAM_NAMES)})")
    p.add_argument("--params", type=Path, help="base parameters JSON for everything the grid does not vary")
    p.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the grid on a dask.distributed cluster "
                   "(e.g. tcp://10.0.0.5:8786) instead of local processes; same results")
    p.add_argument("-o", "--out", type=Path, help="write the tidy table (one row per set and file) as CSV")
    p.add_argument("--plot", type=Path, help="write the trade-off plot (PNG/SVG/PDF): false cut-off rate vs "
                   "latency per policy when pauses are labelled, else lateness vs errors")
    p.add_argument("--best-params", type=Path, help="write the best setting as a --params JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    import json

    from workbench.store.paramfile import read_params

    grid = parse_grid(args.grid)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    base = read_params(args.params) if args.params else None
    df = sweep([str(f) for f in args.files], grid, jobs=args.jobs, progress=not args.no_progress, base=base,
               scheduler=args.scheduler)
    if args.out:
        df.to_csv(args.out, index=False)
    s = summary(df)
    if has_eot(s):
        # eot-bench: the wait users feel and the pauses cut off, per setting, then per policy.
        cols = [*s.attrs["varied"], "turns", "pauses", "cutoffs", "false_cutoff_rate", "latency_ms",
                "latency_p95_ms", "errors"]
        view = s[cols].sort_values(["false_cutoff_rate", "latency_ms"])
        print(view.head(20).to_string(index=False, float_format=lambda v: f"{v:.2f}" if v < 1 else f"{v:.0f}"))
        print()
        print(eot_summary(df).to_string(index=False, float_format=lambda v: f"{v:.2f}" if v < 1 else f"{v:.0f}"))
    else:
        cols = [*s.attrs["varied"], "turns", "found", "split", "merged", "missed", "false_turns", "end_wait_ms",
                "pareto"]
        print(s[cols].head(15).to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    if args.plot:
        tradeoff_plot(df).savefig(args.plot, dpi=110)
    if not s["errors"].isna().all():
        top = best(df)
        print("best: " + ", ".join(f"{k}={top[k]}" for k in s.attrs["varied"]))
        print("  why: " + best_rule(df).removeprefix("best: "))
        if args.best_params:
            Path(args.best_params).write_text(json.dumps(to_params(top).to_dict(), indent=2) + "\n")
    elif args.best_params:
        raise ValueError("--best-params needs labelled audio (<stem>.labels.txt beside each file)")
    return 0
