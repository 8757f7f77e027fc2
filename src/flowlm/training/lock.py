"""One writer per run folder: an exclusive lock on ``<run>/.lock``, held while a training process writes.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so the kernel drops it
when its process ends, however it ends: a lock file left behind by a killed process is stale by
construction and the next run takes it. The file holds the holder's pid and host, for the error a second
writer gets.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flowlm.errors import ConfigError

LOCK_FILE = ".lock"

try:
    import fcntl

    _HOLDER_OFFSET = 0

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    _HOLDER_OFFSET = 64  # byte 0 is locked; the holder's pid is written after it, where others may read

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder for this process or raises a one-line ConfigError."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            text = self.path.read_bytes()[_HOLDER_OFFSET:].decode(errors="replace").split()
        except OSError:
            text = []
        return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "another process"

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is being written by another flowlm run ({self.holder()}): wait for it to "
                "finish, stop it, or pass another --out folder"
            )
        os.ftruncate(fd, _HOLDER_OFFSET)
        os.lseek(fd, _HOLDER_OFFSET, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, _HOLDER_OFFSET)
            _unlock(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
