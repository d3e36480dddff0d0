"""Running `ttsyncd run` as users do, against a redis-server of the test's own, and watching
what it writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis

from tests.helpers import clean_env
from ttsyncd import control
from ttsyncd.embedded import find_redis_server, spawn_foreground

T = TypeVar("T")
QUIET_S = 1.0  # "nothing more is written": 10 file debounce windows, 20 Redis ones


def wait_until(probe: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RedisServer:
    """A redis-server on a unix socket in a short temp dir; starts with notifications off."""

    def __init__(self, workdir: Path, extra: list[str]) -> None:
        self.workdir = workdir
        self.socket = workdir / "redis.sock"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process = spawn_foreground(find_redis_server(), self.socket, self.workdir, self.extra)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM: the server saves its data (when `save` is configured) and exits."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True)


@contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="ttsd-") as tmp:
        server = RedisServer(Path(tmp), ["--save", "", *extra])
        server.start()
        try:
            yield server
        finally:
            if server.process and server.process.poll() is None:
                server.kill()


class Daemon:
    """`python -m ttsyncd --town T --redis-url U --log-format json run` in a subprocess;
    `program` runs another module with the same arguments (tests.faulty_daemon)."""

    def __init__(
        self, town: Path, redis_url: str, env: dict[str, str] | None = None,
        program: tuple[str, ...] = ("-m", "ttsyncd"), options: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.town = town
        self.log_path = town.parent / f"{town.name}-daemon.log"
        clean = clean_env()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *program, "--town", str(town), "--redis-url", redis_url,
                 "--log-format", "json", *options, "run"],
                stdout=log, stderr=subprocess.STDOUT, env={**clean, **(env or {})},
            )  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        try:
            answer = control.request(control.socket_path(self.town), {"cmd": "status"}, 5.0)
        except OSError:
            return None
        return answer["result"] if answer and answer.get("ok") else None

    def wait_ready(self) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.process.poll() is None, f"daemon exited: {self.log()}"
            status = self.status()
            return status if status and (status["syncs"] or status["last_error"]) else None

        return wait_until(ready, 20.0, "the daemon's first sync")

    def wait_idle(self) -> None:
        """Until nothing is pending (no debounced event waiting)."""

        def idle() -> bool:
            status = self.status()
            pending = status["pending_events"] if status else {"file": True}
            return not pending["file"] and not pending["redis"]

        wait_until(idle, 10.0, "the daemon to go idle")

    def terminate(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def started(town: Path, redis_url: str, stop_timeout: float = 5.0) -> Iterator[Daemon]:
    """A daemon on `town`, ready (its first sync done); stopped after, and it must exit 0."""
    running = Daemon(town, redis_url)
    running.wait_ready()
    yield running
    assert running.terminate(stop_timeout) == 0


# The ways editors save a file: vim and nano rewrite it in place or write a temp file and rename
# it over; some tools delete it and write it anew.


def rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+", encoding="utf-8") as out:
        out.truncate(0)
        out.write(text)


def write_temp_and_rename(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def delete_and_recreate(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text, encoding="utf-8")


SAVES: dict[str, Callable[[Path, str], None]] = {
    "rewrite-in-place": rewrite_in_place,
    "write-temp-and-rename": write_temp_and_rename,
    "delete-and-recreate": delete_and_recreate,
}


class FileWrites:
    """Every distinct version of a file seen by polling it every few ms: each atomic replace
    is a new inode, each in-place write a new mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.versions: list[tuple[int, int, int]] = []
        self.running = True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while self.running:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                time.sleep(0.002)
                continue
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if not self.versions or self.versions[-1] != version:
                self.versions.append(version)
            time.sleep(0.002)

    def count_since(self, start: int) -> int:
        return len(self.versions) - start

    def stop(self) -> None:
        self.running = False
        self.thread.join()
