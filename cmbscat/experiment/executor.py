"""Where the per-map stages' shard tasks run: Dask, on one machine or a cluster.

A sharded stage (simulate, scatter, stats over ``workers`` shards) is a list of
commands ``cmbscat STAGE ... SHARD_FILE --shard K/N``, each writing one resumable
shard file that the driver then joins (:func:`cmbscat.store.combine_shards`). A
:class:`ShardExecutor` runs such a list on Dask distributed workers:

* ``local`` (default): a ``LocalCluster`` of one-thread worker processes on this
  machine, started at the first sharded stage and kept for the others;
* ``dask`` with ``scheduler``: the workers of a running Dask scheduler (its address,
  e.g. ``tcp://10.0.0.1:8786``);
* ``dask`` with ``slurm``: ``dask_jobqueue.SLURMCluster`` with the given options (the
  config's ``"slurm"`` object: ``cores``, ``memory``, ``queue``, ``walltime``, ...),
  scaled to the number of shards;
* ``dask`` with neither: a ``LocalCluster``, as ``local``.

Each task runs the command in a subprocess of its worker with one OpenMP thread
(healpy's transforms scale better across processes than across threads on few
cores), so a task is exactly what a Slurm array task would run by hand. Workers on
other machines need the package installed and the output folder on a shared file
system.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from cmbscat.errors import CmbscatError

EXECUTORS = ("local", "dask")


def check_executor_options(kind: str, scheduler: str | None, slurm: bool) -> None:
    """Refuse, in one line, executor options that do not go together."""
    if kind not in EXECUTORS:
        raise CmbscatError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if kind == "local" and (scheduler or slurm):
        raise CmbscatError("--scheduler and --slurm go with --executor dask")
    if scheduler and slurm:
        raise CmbscatError("give --scheduler or --slurm, not both")


#: Variables a Dask nanny sets for its own worker process (``distributed.nanny.pre-spawn-environ``)
#: that a shard task's subprocess must not inherit: MALLOC_TRIM_THRESHOLD_=65536 makes glibc
#: hand every freed block above 64 kB back to the system, so the transforms' large temporary
#: arrays are mapped and faulted in again at each allocation (measured: the same healpy loop
#: 4-5 % slower; the executor benchmark's per-map gap).
WORKER_ONLY_ENV = ("MALLOC_TRIM_THRESHOLD_",)


def one_thread_env() -> dict:
    """This process's environment with one OpenMP / MKL thread, for ``cmbscat`` subprocesses
    that run side by side (less :data:`WORKER_ONLY_ENV`)."""
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ONLY_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def last_error_line(stderr: str, returncode: int) -> str:
    """The last line a failed ``cmbscat`` subprocess wrote to stderr (its one-line error)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {returncode}"


def run_command(args: list[str]) -> tuple[int, str]:
    """Run ``python -m cmbscat ARGS`` with one OpenMP thread; (exit status, last stderr line)."""
    proc = subprocess.run([sys.executable, "-m", "cmbscat", *args], env=one_thread_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc.returncode, last_error_line(proc.stderr, proc.returncode)


class ShardExecutor:
    """Runs lists of shard commands on Dask workers (see the module docstring).

    Parameters
    ----------
    kind : ``"local"`` or ``"dask"``.
    scheduler : address of a running Dask scheduler (``kind="dask"`` only).
    slurm : options of ``dask_jobqueue.SLURMCluster`` (``kind="dask"`` only).

    The cluster is started at the first :meth:`run` (nothing starts for a pipeline
    whose per-map stages are all current) and closed by :meth:`close` or on leaving a
    ``with`` block.
    """

    def __init__(self, kind: str = "local", scheduler: str | None = None, slurm: dict | None = None):
        check_executor_options(kind, scheduler, slurm is not None)
        self.kind, self.scheduler, self.slurm = kind, scheduler, slurm
        self._client = self._cluster = None

    def __enter__(self) -> "ShardExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        if self.scheduler:
            return f"Dask scheduler {self.scheduler}"
        if self.slurm is not None:
            return "Dask SLURMCluster"
        return "Dask LocalCluster"

    def _connect(self, n_tasks: int):
        if self._client is not None:
            return self._client
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise CmbscatError("the Dask executor needs dask[distributed]: "
                               "pip install 'dask[distributed]'") from None
        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise CmbscatError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
        elif self.slurm is not None:
            self._cluster = slurm_cluster(self.slurm)
            self._cluster.scale(n=n_tasks)
            self._client = Client(self._cluster)
        else:
            # ":0": any free port for the scheduler's HTTP server, which starts even without a
            # dashboard and otherwise warns when another cluster (a second pipeline) holds 8787
            self._cluster = LocalCluster(n_workers=n_tasks, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")
            self._client = Client(self._cluster)
        return self._client

    def run(self, commands: list[list[str]], poll: Callable[[], None] | None = None) -> None:
        """Run every command (``cmbscat`` arguments) as one Dask task; wait for all of them,
        calling ``poll`` about once a second; raise if any failed (its last error line)."""
        client = self._connect(len(commands))
        futures = client.map(run_command, commands, pure=False)
        while not all(future.done() for future in futures):
            time.sleep(1.0)
            if poll is not None:
                poll()
        for args, future in zip(commands, futures):
            try:
                returncode, last = future.result()
            except Exception as exc:  # the worker died or the task could not run
                raise CmbscatError(f"a {args[0]} shard task failed on {self.describe()}: {exc}") from None
            if returncode != 0:
                raise CmbscatError(f"a {args[0]} shard failed: {last}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None


def slurm_cluster(options: dict):
    """``dask_jobqueue.SLURMCluster(**options)``, one-thread processes by default; a bad
    option is refused in one line."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise CmbscatError("--slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    options = {"cores": 1, "processes": 1, "memory": "4GB", **options}
    try:
        return SLURMCluster(**options)
    except (TypeError, ValueError) as exc:
        raise CmbscatError(f"config 'slurm' options: {exc}") from None

