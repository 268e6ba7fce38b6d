"""``workbench sweep --scheduler ADDRESS``: the grid on a dask.distributed cluster.

Why: a grid over hours of audio with the stateful scorers (webrtcvad and Silero score window by window) or the
end-of-turn model outgrows one machine.  The audio is scattered to every worker once; each
parameter set is one task running the same ``sweep._rows`` the local pool runs, so the rows are the
same and come back in the grid's order.  Workers need this package importable (``pip install -e .``
on each, or the same image).  A failing set is the one-line ``SweepError`` naming it, as locally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.core.params import TurnParams

CONNECT_TIMEOUT_S = 10  # bounded: a wrong address is an error, not a hang
_CACHES: dict[Any, Any] = {}  # per worker process: the memoised end model


def _task(params: TurnParams, sources: list[Any]) -> list[dict[str, Any]]:
    from workbench.analysis.sweep import SweepError, _rows, describe

    try:
        return _rows(params, sources, _CACHES)
    except Exception as exc:  # noqa: BLE001 - any worker failure becomes one line naming the set
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"sweep worker failed on {describe(params)}: {msg}") from None


def run_on_cluster(address: str, sources: list[Any], param_sets: list[TurnParams],
                   on_done: Callable[[], None] = lambda: None) -> list[list[dict[str, Any]]]:
    """Run every set on the cluster at ``address``; results in ``param_sets`` order, ``on_done`` per set."""
    from workbench.analysis.sweep import SweepError

    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SweepError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise SweepError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    try:
        _CACHES.clear()
        shared = client.scatter(sources, broadcast=True)
        futures = [client.submit(_task, ps, shared, pure=False) for ps in param_sets]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for fut in as_completed(futures):
            results[index[fut.key]] = fut.result()  # re-raises the worker's SweepError
            on_done()
        return results
    finally:
        client.close()
