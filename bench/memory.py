"""`python -m bench.memory [--sizes N ...] [--repeat N] [--burst N]`: the daemon's memory per
task, alone (the whole `python -m bench` takes several minutes per size).

For each size, as `python -m bench` does it: a generated town (bench/town.py) in an empty
Redis of our own, the real daemon started on it (its first sync pushes every task), VmRSS once
it is idle ("after start"); then edits both ways (editor saves of descriptions, tinytown-style
agent updates, a burst of result updates), VmRSS again ("after edits"). Each is also shown as
KB per task above the RSS of a daemon on an empty town. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from bench.live import LiveTown, burst, redis_to_file, save_to_redis
from bench.procs import Daemon, RedisServer, memory_mb
from bench.run import READY_TIMEOUT_S, empty_daemon_memory, fmt_load
from bench.town import make_town, plan_text, reset_files, town_name
from ttsyncd.config import SyncSettings
from ttsyncd.tinytown import register_agent


def per_task_kb(rss_mb: float, empty_mb: float, size: int) -> float:
    """KB (1,000 bytes) per task above an empty daemon, as bench/report.py counts it."""
    return (rss_mb - empty_mb) * 1024 * 1024 / size / 1000


def measure(size: int, workdir: Path, server: RedisServer, args: argparse.Namespace
            ) -> dict[str, Any]:  # fmt: skip
    town = make_town(workdir / f"town-{size}", size)
    client = server.client()
    client.flushall()
    reset_files(town, plan_text(size))
    agent = register_agent(client, town_name(size), "bench-agent")
    daemon = Daemon(town, server.url, workdir / f"daemon-{size}.log")
    out: dict[str, Any] = {}
    try:
        started = perf_counter()
        daemon.wait_ready(READY_TIMEOUT_S)
        out["first_sync_s"] = perf_counter() - started
        live = LiveTown(town, size, daemon, client, db=0, debounce=SyncSettings())
        live.settle()
        out["after_start"] = memory_mb(daemon.pid)
        save_to_redis(live, args.repeat)
        redis_to_file(live, args.repeat, agent)
        if args.burst:
            burst(live, args.burst, 1.0)
        live.settle()
        out["after_edits"] = memory_mb(daemon.pid)
    finally:
        daemon.stop()
        client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], metavar="N")
    parser.add_argument("--repeat", type=int, default=10, metavar="N",
                        help="editor saves, and as many agent updates (default 10)")  # fmt: skip
    parser.add_argument("--burst", type=int, default=1000, metavar="N",
                        help="result updates over one second; 0: none (default 1000)")  # fmt: skip
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ttm-"))  # short: unix socket paths max ~107 bytes
    server = RedisServer(workdir / "redis")
    try:
        load_start = os.getloadavg()
        empty = empty_daemon_memory(workdir, server)["rss_mb"]
        print(f"empty daemon: RSS {empty:.1f} MB", flush=True)
        for size in args.sizes:
            result = measure(size, workdir, server, args)
            for when in ("after_start", "after_edits"):
                rss = result[when]["rss_mb"]
                print(f"{size:>7,} tasks {when.replace('_', ' '):<12} RSS {rss:6.1f} MB "
                      f"(peak {result[when]['peak_rss_mb']:6.1f})  "
                      f"{per_task_kb(rss, empty, size):4.2f} KB/task", flush=True)  # fmt: skip
            print(f"{size:>7,} tasks first sync {result['first_sync_s']:.1f} s", flush=True)
        print(f"load average {fmt_load(list(load_start))} at start, "
              f"{fmt_load(list(os.getloadavg()))} at the end")  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
