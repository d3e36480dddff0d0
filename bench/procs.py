"""The processes the benchmark owns: its redis-server and the ttsyncd daemons it measures, and
what /proc says about a process's CPU time and memory (no psutil needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from ttsyncd import control
from ttsyncd.embedded import find_redis_server, spawn_foreground

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Commands ttsyncd writes with and the benchmark's own writers (tinytown-style HDEL + HSET)
# never send: their calls in INFO commandstats are the daemon's writes. HSET/HDEL are left out
# on purpose, since Redis also counts those when a script calls them.
DAEMON_WRITE_COMMANDS = ("evalsha", "eval", "multi", "del", "unlink", "rpush", "lpush", "lrem")


class BenchError(RuntimeError):
    """The harness could not measure (a daemon that died, a change that never arrived)."""


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, step: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class RedisServer:
    """A redis-server of our own on a unix socket in `workdir`: never port 6379, no snapshots."""

    def __init__(self, workdir: Path) -> None:
        self.binary = find_redis_server()
        self.socket = workdir / "redis.sock"
        self.process = spawn_foreground(
            self.binary, self.socket, workdir, ["--save", "", "--appendonly", "no"]
        )

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def command_calls(client: redis.Redis, names: tuple[str, ...]) -> dict[str, int]:
    """Calls so far of each of these commands (INFO commandstats), 0 when never called."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}


def calls_since(client: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    after = command_calls(client, tuple(before))
    return {name: after[name] - count for name, count in before.items() if after[name] != count}


def clean_env() -> dict[str, str]:
    """This environment without REDIS_URL or TTSYNCD_*: a ttsyncd child sees only what the
    bench passes it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TTSYNCD_"))}


class Daemon:
    """`python -m ttsyncd --town T --redis-url U --log-format json run`, this checkout's code."""

    def __init__(self, town: Path, redis_url: str, log_path: Path) -> None:
        self.town = town
        self.log_path = log_path
        # The daemon must see only what we pass: no REDIS_URL or TTSYNCD_* from the caller.
        env = clean_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.started = time.perf_counter()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ttsyncd",
                    "--town",
                    str(town),
                    "--redis-url",
                    redis_url,
                    "--log-format",
                    "json",
                    "run",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict[str, Any] | None:
        try:
            answer = control.request(control.socket_path(self.town), {"cmd": "status"}, 5.0)
        except OSError:
            return None
        return answer["result"] if answer and answer.get("ok") else None

    def alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise BenchError(f"the daemon exited with {self.process.returncode}:\n{tail}")

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self.alive()
            status = self.status()
            return status if status and (status["syncs"] or status["last_error"]) else None

        status = wait_until(ready, timeout, "the daemon's first sync")
        if status["last_error"]:
            raise BenchError(f"the daemon's first sync failed: {status['last_error']}")
        return status

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no debounced event is waiting. (A sync under way shows nothing pending, so
        callers also leave a gap longer than the longest debounce wait.)"""

        def idle() -> bool:
            self.alive()
            status = self.status()
            return bool(status) and not any(status["pending_events"].values())  # type: ignore[index]

        wait_until(idle, timeout, "the daemon to go idle", step=0.02)

    def stop(self) -> int | None:
        """SIGTERM (the daemon flushes and exits 0); kill if it does not go within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                return None
        return self.process.returncode

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def sync_durations_ms(self, since: int) -> list[float]:
        """`duration_ms` of every sync the daemon logged after byte `since` of its log."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        durations = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "sync":
                durations.append(float(entry["duration_ms"]))
        return durations


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB (MiB), from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024  # kB
    return {"rss_mb": round(values["VmRSS"], 1), "peak_rss_mb": round(values["VmHWM"], 1)}
