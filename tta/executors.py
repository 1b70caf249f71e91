"""Where sweep cells run: ``local`` worker processes or ``ray`` tasks (registry ``EXECUTORS``).

Both call :func:`tta.grid.execute_cell` once per cell and hand each result to ``on_done``
as soon as it finishes.

* ``local``: a ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method
  (fresh interpreters: no forked torch thread pools). Workers append their rows to the
  SQLite store themselves, one committed transaction per domain (WAL + ``BEGIN IMMEDIATE``,
  see :mod:`tta.store`), so a killed sweep keeps every finished domain.
* ``ray`` (optional: ``pip install 'tta-bench[ray]'``): one Ray task per cell
  (``num_cpus=1``, no retries) on the cluster at ``--address`` or, without one, on a
  local Ray instance started with ``--workers`` CPUs. Workers may run on other machines
  and need not see the store file: each task returns its rows and the driver appends
  them. Nodes need tta installed and the data under the same ``--data-root``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from tta.errors import UserError
from tta.grid import CellTask, execute_cell
from tta.registry import Registry

OnDone = Callable[[CellTask, dict[str, Any] | None, BaseException | None], None]
EXECUTORS: Registry = Registry("sweep backend")
#: environment passed on to Ray workers (a local Ray instance's workers do not inherit the driver's)
FORWARDED_ENV = ("TTA_CACHE", "TTA_DATA", "TTA_PROTOCOLS", "TTA_PLUGIN_PATH")


@EXECUTORS.register("local")
class LocalExecutor:
    """Worker processes on this machine; they write to the store directly."""

    writes_store = True

    def __init__(self, workers: int, address: str | None = None) -> None:
        if address:
            raise UserError("--address is for --backend ray")
        self.workers = workers

    def run(self, tasks: list[CellTask], on_done: OnDone) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(execute_cell, task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    exc = future.exception()
                    on_done(futures[future], None if exc else future.result(), exc)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


@EXECUTORS.register("ray")
class RayExecutor:
    """One Ray task per cell; results (rows included) come back to the driver."""

    writes_store = False

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray: pip install 'tta-bench[ray]' (or pip install ray)") from None
        self.ray, self.workers, self.address = ray, workers, address

    def run(self, tasks: list[CellTask], on_done: OnDone) -> None:
        ray = self.ray
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "runtime_env": {"env_vars": env} if env else None}
            if self.address:
                options["address"] = self.address
            else:
                options["num_cpus"] = self.workers
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot start or reach Ray{f' at {self.address}' if self.address else ''}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(execute_cell)
            pending = {remote.remote(task): task for task in tasks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(done[0])
                try:
                    result, exc = ray.get(done[0]), None
                except ray.exceptions.RayTaskError as err:
                    result, exc = None, err.as_instanceof_cause()
                except ray.exceptions.RayError as err:
                    result, exc = None, err
                on_done(task, result, exc)
        finally:
            if started_here:
                ray.shutdown()
