"""Shared fixtures: a real redis-server on a unix socket in a temp dir, never port 6379."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.daemon_harness import RedisServer, redis_server
from ttsyncd.embedded import find_redis_server, spawn_foreground


@pytest.fixture(scope="session")
def redis_socket() -> Iterator[Path]:
    # A short directory name: unix socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="ttsr-") as tmp:
        socket_path = Path(tmp) / "redis.sock"
        process = spawn_foreground(find_redis_server(), socket_path, Path(tmp), ["--save", ""])
        try:
            yield socket_path
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own (notifications off, as a fresh server has them), for
    the daemon tests: one per test, so a test may stop, kill or reconfigure it."""
    with redis_server() as running:
        yield running


@pytest.fixture
def redis_url(redis_socket: Path) -> str:
    return f"unix://{redis_socket}"


@pytest.fixture
def rdb(redis_socket: Path) -> Iterator[redis.Redis]:
    """A client on the test server, emptied before each test (the server is ours alone)."""
    client = redis.Redis(unix_socket_path=str(redis_socket), decode_responses=True)
    client.flushall()
    yield client
    client.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the stress, fault and fuzz suites at their full counts (also: TTSYNCD_LONG=1)",
    )


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True for the full counts; CI runs the short form."""
    return bool(request.config.getoption("--long") or os.environ.get("TTSYNCD_LONG"))
