"""One writer per output: a lock file ``<OUT>.lock`` beside what a stage writes.

Two runs of a stage on the same output (a Slurm array task submitted twice, a
command started in two terminals) would otherwise race on ``<OUT>.partial/`` and
the loser would die with an obscure file error. :class:`OutputLock` makes the
second one stop at start, before it writes anything, with one line naming the
holder::

    with OutputLock("sims.h5"):          # creates sims.h5.lock, removes it on exit
        ...write sims.h5...

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds JSON:
``pid``, ``host``, ``started`` (UTC), ``command`` and, on Linux, ``proc_start``
(the process's start time in clock ticks since boot, which tells a live holder
from a new process that was given the same pid). When the file already exists:

* same host, holder alive: refused (``CmbscatError``: "OUT is being written by
  pid N on HOST since T (lock OUT.lock); ...");
* same host, holder gone (no such pid, a zombie, or a pid now used by another
  process): the lock is stale, left by a killed run; it is taken over with a
  one-line note on stderr, so that the run resumes;
* another host: whether the holder lives cannot be checked from here: refused,
  with the advice to remove the lock file if that run is known to be gone;
* empty (a crash between creating and writing it, a window of microseconds):
  stale once older than ``EMPTY_LOCK_GRACE_S`` seconds, else refused (a writer
  is just starting); unreadable or not JSON: refused, naming the file to remove.

Taking over is safe when several runs find the same stale lock at once: each must
first create ``<OUT>.lock.takeover-<digest of the stale content>`` (O_EXCL); only
its creator removes the stale lock, and only if the content is still the one it
judged, then competes with everyone else for a fresh ``O_EXCL`` create. Exactly one
run ends up holding the lock.

The lock is re-entrant within a process (a stage that removes its own output
while holding it) and is released on every exit of the ``with`` block: success,
``CmbscatError``, any exception, Ctrl-C, and SIGTERM under the ``cmbscat`` command
(which turns it into an exception; Python's default action would skip ``finally``).
A ``kill -9`` leaves it behind as a stale lock of a dead pid.
Folders that the lock had to create for itself (the output's parent) are removed
again on release if they are still empty, so a refused run leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from cmbscat.errors import CmbscatError

LOCK_SUFFIX = ".lock"
EMPTY_LOCK_GRACE_S = 10.0  # an empty lock file older than this is a crashed create: stale
TAKEOVER_GRACE_S = 30.0    # a takeover marker older than this was left by a crashed taker
_COMMAND_CHARS = 300

_held: dict[str, list] = {}  # absolute lock path -> [depth, bytes written]: re-entrance


def lock_path_for(path: str | os.PathLike) -> Path:
    """``<OUT>.lock`` beside ``path`` (a file or a run folder; ``.`` is made absolute first)."""
    path = Path(path)
    if not path.name:
        path = Path(os.path.abspath(path))
    return path.with_name(path.name + LOCK_SUFFIX)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a Linux process, or None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, proc_start: int | None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote the lock."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return True  # cannot tell: assume alive (refuse rather than race)
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False  # exited, not yet reaped
        if proc_start is not None:
            return start == proc_start  # else the pid now belongs to another process
    # no start time to compare: our own pid, not in _held, is an earlier process's
    return pid != os.getpid()


class OutputLock:
    """Context manager holding ``<OUT>.lock`` for the output ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.target = Path(path)
        self.path = lock_path_for(path)
        self._key = os.path.realpath(self.path)
        self._created_dirs: list[Path] = []

    # -- acquisition ----------------------------------------------------------
    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        held = _held.get(self._key)
        if held is not None:
            held[0] += 1
            return
        content = self._content()
        for _ in range(100):
            self._ensure_parent()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._judge_existing()  # refuses, or removes a stale lock: then try again
                continue
            except FileNotFoundError:
                continue  # the parent was removed meanwhile (an empty folder cleaned up)
            except OSError as exc:
                self._forget_dirs()
                raise CmbscatError(f"cannot write output {self.target}: cannot create the lock "
                                   f"{self.path}: {exc.strerror or exc}") from None
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            _held[self._key] = [1, content]
            return
        self._forget_dirs()
        raise CmbscatError(f"could not take the lock {self.path} for {self.target}: "
                           "it keeps changing; is another run starting?")

    @staticmethod
    def _content() -> bytes:
        stat = _proc_stat(os.getpid())
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:_COMMAND_CHARS],
            "proc_start": stat[1] if stat else None,
        }
        return (json.dumps(record) + "\n").encode()

    def _ensure_parent(self) -> None:
        parent = self.path.parent
        missing = []
        for folder in [parent, *parent.parents]:
            if folder.exists():
                if not folder.is_dir():
                    self._forget_dirs()
                    raise CmbscatError(f"cannot write output {self.target}: {folder} is not a folder")
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
                self._created_dirs.append(folder)
            except FileExistsError:
                pass
            except OSError as exc:
                self._forget_dirs()
                raise CmbscatError(f"cannot write output {self.target}: "
                                   f"{exc.strerror or exc}") from None

    def _holder(self, record: dict) -> str:
        return (f"{self.target} is being written by pid {record.get('pid')} on "
                f"{record.get('host')} since {record.get('started')} (lock {self.path})")

    def _judge_existing(self) -> None:
        """Refuse (CmbscatError) unless the existing lock is stale; remove a stale one."""
        for _ in range(50):  # an empty lock just created: give its writer a moment to fill it
            try:
                raw = self.path.read_bytes()
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            except OSError as exc:
                self._refuse(f"cannot read the lock {self.path} of {self.target} "
                             f"({exc.strerror or exc}); remove it if no run is writing {self.target}")
            if raw.strip() or age >= EMPTY_LOCK_GRACE_S:
                break
            time.sleep(0.02)
        if not raw.strip():
            if age < EMPTY_LOCK_GRACE_S:
                self._refuse(f"{self.target} is being written by another run, which is just "
                             f"starting (lock {self.path}); wait for it")
            self._take_over(raw, f"an empty lock {self.path} ({age:.0f} s old, left by a crash)")
            return
        try:
            record = json.loads(raw)
            pid = int(record["pid"])
            host = str(record["host"])
            proc_start = record.get("proc_start")
            proc_start = None if proc_start is None else int(proc_start)
        except (ValueError, TypeError, KeyError):
            self._refuse(f"{self.target} is locked by {self.path}, which cannot be read as a "
                         f"cmbscat lock; remove it if no run is writing {self.target}")
        if host != socket.gethostname():
            self._refuse(f"{self._holder(record)}; that is another host, so this one cannot "
                         "tell whether the run is alive: wait for it, or remove the lock if "
                         "that process is gone")
        if _pid_alive(pid, proc_start):
            self._refuse(f"{self._holder(record)}; wait for it, or remove the lock if that "
                         "process is gone")
        self._take_over(raw, f"the stale lock {self.path} of pid {pid} on {host} "
                             f"(since {record.get('started')}), which is no longer running")

    def _refuse(self, message: str):
        self._forget_dirs()
        raise CmbscatError(message)

    def _take_over(self, stale: bytes, what: str) -> None:
        """Remove the lock if it still holds ``stale``; one remover per stale content."""
        marker = self.path.with_name(
            f"{self.path.name}.takeover-{hashlib.sha256(stale).hexdigest()[:16]}")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime > TAKEOVER_GRACE_S:
                    marker.unlink(missing_ok=True)  # its creator crashed mid-takeover
            except FileNotFoundError:
                pass
            time.sleep(0.05)  # another run is taking it over: look again
            return
        try:
            try:
                still = self.path.read_bytes() == stale
            except FileNotFoundError:
                still = False
            if still:
                self.path.unlink()
                click.echo(f"note: taking over {what}", err=True)
        finally:
            marker.unlink(missing_ok=True)

    # -- release ------------------------------------------------------------------
    def release(self) -> None:
        held = _held.get(self._key)
        if held is None:
            return
        held[0] -= 1
        if held[0] > 0:
            return
        del _held[self._key]
        try:
            if self.path.read_bytes() == held[1]:  # still ours: not removed by hand and retaken
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._forget_dirs()

    def _forget_dirs(self) -> None:
        """Remove the folders this lock created, innermost first, where they are still empty."""
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:
                break
        self._created_dirs = []
