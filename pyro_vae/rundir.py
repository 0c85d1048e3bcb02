"""One writer per run directory, and a run directory whose files agree with each other.

:func:`claim` holds a run directory for one process while it trains into it, so that two runs
started with the same ``--out`` (or two ``--resume`` of one run) never write the same files:
the second is refused with one line. :func:`check_config_file` refuses to resume a run whose
``config.json`` was edited so that it no longer describes the checkpoint it stands beside.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .config import RunConfig
from .errors import PyroVAEError

try:
    import fcntl
except ImportError:  # Windows: no flock; the claim is then the emptiness check alone, as before it existed
    fcntl = None

LOCK = ".lock"
CONFIG = "config.json"
# flock on a file system that does not support it (some network and FUSE mounts): train unclaimed
# there, rather than not at all
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def check_empty(run_dir: Path) -> None:
    """A new run's directory holds nothing, or only the lock of a run that is starting in it."""
    if run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise PyroVAEError(f"run directory {run_dir} already exists and is not empty; use --resume or another --out")


@contextmanager
def claim(run_dir: str | Path, fresh: bool):
    """Hold ``run_dir`` for this process alone while the block runs; :class:`PyroVAEError` at once
    when another process holds it.

    ``fresh``: a new run; the directory is created where absent and must hold nothing, checked
    once the lock is held, so that of two runs started together exactly one trains and the other
    is refused, whichever of them checked first. A fresh claim that ends with nothing written
    removes the directories it created, so a run refused on bad input leaves no trace.

    The lock is ``fcntl.flock`` on ``run_dir/.lock``, held for the whole run. The kernel drops it
    when the process ends, however it ends (SIGKILL, the OOM killer, a power cut of a local disk),
    so a crashed run never leaves a stale lock behind for its own ``--resume`` to trip over, which
    an O_CREAT|O_EXCL lock file would. ``mkdir`` alone cannot claim a directory that already
    exists, as every resumed one does. flock rather than fcntl's record locks: those belong to
    the process, not to the open file, so a second claim in the same process would succeed and
    closing any other descriptor of the file would silently drop the lock.
    """
    run_dir = Path(run_dir)
    created = []  # the directories this claim makes, deepest first
    if fresh:
        missing = run_dir
        while not missing.exists() and missing != missing.parent:
            created.append(missing)
            missing = missing.parent
    fd = _lock(run_dir, fresh)
    try:
        if fresh:
            check_empty(run_dir)
        yield
    finally:
        if fd is not None:
            # unlinked while still held: a process that opened the file meanwhile sees, once it
            # gets the lock, that the file it locked is no longer the run's lock (see _lock)
            (run_dir / LOCK).unlink(missing_ok=True)
            os.close(fd)
        for folder in created:
            try:
                folder.rmdir()  # only ever an empty one: a run that wrote something keeps it
            except OSError:
                break


def _busy(run_dir: Path, fd: int) -> PyroVAEError:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    held = f" (pid {pid})" if pid.isdigit() else ""
    return PyroVAEError(f"run directory {run_dir} is being written by another process{held}; wait for it to "
                        "finish, or use another --out")


def _lock(run_dir: Path, fresh: bool) -> int | None:
    """The descriptor of ``run_dir/.lock``, locked; None where locks are not to be had."""
    if fcntl is None:
        if fresh:
            run_dir.mkdir(parents=True, exist_ok=True)
        return None
    path = run_dir / LOCK
    for _ in range(100):
        if fresh:
            run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            if fresh:  # a run that gave up on the directory removed it: make it again
                continue
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _busy(run_dir, fd)
            os.close(fd)
            raise error from None
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKS:
                return None
            raise
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for the message of a process refused
            return fd
        os.close(fd)  # the holder unlinked it as it let go: lock the file now in its place
    raise PyroVAEError(f"run directory {run_dir} is being claimed and released by other processes over and over; "
                       "use another --out")


def check_config_file(run_dir: Path, saved: RunConfig, last: str, epochs: int | None) -> None:
    """``run_dir/config.json``, where present, describes the run of the checkpoint ``last`` (whose
    config is ``saved``): --resume continues the checkpoint, so an edit of config.json would be
    silently ignored and leave the file contradicting the run. ``out`` is the directory itself
    and ``epochs``, where given (``--epochs``), is the resumed run's new budget."""
    path = run_dir / CONFIG
    if not path.exists():
        return  # written again with the next checkpoint
    edited = RunConfig.load(path).to_dict()
    recorded = json.loads(json.dumps(saved.to_dict()))  # as JSON holds it: lists for tuples
    ignored = {"out"} | ({"epochs"} if epochs is not None else set())
    differ = [key for key in recorded if key not in ignored and edited[key] != recorded[key]]
    if not differ:
        return
    shown = ", ".join(f"{key} ({json.dumps(edited[key])} there, {json.dumps(recorded[key])} in {last})"
                      for key in differ)
    budget = "give --epochs to change the budget, " if "epochs" in differ else ""
    raise PyroVAEError(f"{path} differs from the run's checkpoint in {shown}; --resume continues the checkpoint's "
                       f"run: {budget}undo the edit, or train a new run with --config {path} and another --out; "
                       "nothing written")
