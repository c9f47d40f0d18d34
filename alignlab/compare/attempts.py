"""A cell's wall time over all its attempts, and the lock that keeps one process per folder.

A cell may take several attempts: interrupted (Ctrl-C, ``kill``) or failed, it is resumed by the
next run of the comparison. ``CELL_DIR/attempts.json`` lists them, each with when it started, its
wall-clock seconds and how it ended (``ok``, ``failed``, ``interrupted``; ``running`` while it runs,
and still ``running`` afterwards if the process was killed outright). The running attempt's
seconds are rewritten every ``HEARTBEAT`` seconds, so a process killed without warning loses at
most that much of its time. An attempt's time runs from the launch of its process by the harness
(``LAUNCHED``), start-up included. The report's time is the sum over the attempts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

ATTEMPTS = "attempts.json"
HEARTBEAT = 10.0
LAUNCHED = "ALIGNLAB_CELL_LAUNCHED"  # the environment variable of when the harness launched the process (Unix time)


def read_attempts(cell_dir: Path) -> list[dict[str, Any]]:
    """The attempts recorded in ``cell_dir`` (none when the file is missing or unreadable)."""
    try:
        value = json.loads((cell_dir / ATTEMPTS).read_text())
    except (OSError, ValueError):
        return []
    return [a for a in value if isinstance(a, dict)] if isinstance(value, list) else []


class Attempt:
    """This process's attempt at a cell: ``with Attempt(cell_dir) as attempt: ...; attempt.end = "ok"``.
    Entering records it (``running``), a thread keeps its seconds current, leaving records how it
    ended (``failed`` unless ``end`` was set). Its time runs from ``launched`` (Unix time: when the
    harness started the process, so the start-up, imports included, counts) or else from now."""

    def __init__(self, cell_dir: Path, heartbeat: float = HEARTBEAT, launched: float | None = None):
        self.file = cell_dir / ATTEMPTS
        self.heartbeat = heartbeat
        self.earlier = read_attempts(cell_dir)
        self.end = "failed"
        before = max(0.0, time.time() - launched) if launched is not None else 0.0
        self._start = time.perf_counter() - before
        self._ended: float | None = None
        self._entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": 0.0, "end": "running"}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    @property
    def seconds(self) -> float:
        """This attempt's wall time (so far, while it runs)."""
        return (self._ended or time.perf_counter()) - self._start

    def total(self) -> tuple[float, int]:
        """Seconds of all attempts (this one up to now) and their number."""
        return sum(float(a.get("seconds", 0.0)) for a in self.earlier) + self.seconds, len(self.earlier) + 1

    def _write(self, end: str) -> None:
        with self._lock:
            self._entry.update(seconds=round(self.seconds, 2), end=end)
            tmp = self.file.with_name(self.file.name + ".tmp")
            tmp.write_text(json.dumps([*self.earlier, self._entry], indent=1))
            os.replace(tmp, self.file)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self._write("running")

    def __enter__(self) -> Attempt:
        self._write("running")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._ended = time.perf_counter()
        self._write(self.end)


def hold_lock(path: Path) -> IO | None:
    """An exclusive lock on ``path`` (created if missing) held while the returned file stays open,
    and by nobody else: None when another process holds it. The file says who holds it (its pid).
    Without ``fcntl`` (not on a POSIX system) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return open(os.devnull, "w")  # noqa: SIM115
    handle = open(path, "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_holder(path: Path) -> str:
    """The pid written in a lock file, as text ('?' when unknown)."""
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
