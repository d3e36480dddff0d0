"""`python -m bench.memory [--sizes N ...] [--repeat N] [--burst N]`: the daemon's memory per
task, alone (the whole `python -m bench` takes several minutes per size).

For each size, as `python -m bench` does it: a generated town (bench/town.py) in an empty
Redis of our own, the real daemon started on it (its first sync pushes every task), VmRSS once
it has been idle for `--idle` seconds ("after start"; an idle daemon hands free memory back
after 2 s); then edits both ways (editor saves of descriptions, tinytown-style agent updates,
a burst of result updates) and as long idle, VmRSS again ("after edits"). Each is also shown
as KB per task above the RSS of a daemon on an empty town, read the same way. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from time import perf_counter
from typing import Any

from bench.live import LiveTown, burst, redis_to_file, save_to_redis
from bench.procs import Daemon, RedisServer, memory_mb
from bench.run import READY_TIMEOUT_S, fmt_load
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
        time.sleep(args.idle)
        out["after_start"] = memory_mb(daemon.pid)
        saves = save_to_redis(live, args.repeat)
        pulls = redis_to_file(live, args.repeat, agent)
        out["sync_ms"] = {  # the daemon's own sync time (its log), median: memory is not free
            "save": statistics.median(saves["daemon_sync_ms"] or [0.0]),
            "agent update": statistics.median(pulls["daemon_sync_ms"] or [0.0]),
        }
        if args.burst:
            burst(live, args.burst, 1.0)
        live.settle()
        time.sleep(args.idle)
        out["after_edits"] = memory_mb(daemon.pid)
        if args.restart:  # the same town again: its base loaded from disk, Redis holding it
            daemon.stop()
            daemon = Daemon(town, server.url, workdir / f"daemon-{size}-again.log")
            daemon.wait_ready(READY_TIMEOUT_S)
            LiveTown(town, size, daemon, client, db=0, debounce=SyncSettings()).settle()
            time.sleep(args.idle)
            out["after_restart"] = memory_mb(daemon.pid)
    finally:
        daemon.stop()
        client.close()
    return out


def empty_daemon_rss(workdir: Path, server: RedisServer, idle_s: float) -> float:
    """The RSS of a daemon on a town with no tasks, idle `idle_s` after its first sync."""
    town = make_town(workdir / "town-empty", 0)
    server.client().flushall()
    daemon = Daemon(town, server.url, workdir / "daemon-empty.log")
    try:
        daemon.wait_ready(READY_TIMEOUT_S)
        time.sleep(idle_s)
        return memory_mb(daemon.pid)["rss_mb"]
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], metavar="N")
    parser.add_argument("--repeat", type=int, default=10, metavar="N",
                        help="editor saves, and as many agent updates (default 10)")  # fmt: skip
    parser.add_argument("--burst", type=int, default=1000, metavar="N",
                        help="result updates over one second; 0: none (default 1000)")  # fmt: skip
    parser.add_argument("--restart", action="store_true",
                        help="then start the daemon on the town again, read again")  # fmt: skip
    parser.add_argument("--idle", type=float, default=4.0, metavar="S",
                        help="seconds idle before each reading (default 4)")  # fmt: skip
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ttm-"))  # short: unix socket paths max ~107 bytes
    server = RedisServer(workdir / "redis")
    try:
        load_start = os.getloadavg()
        empty = empty_daemon_rss(workdir, server, args.idle)
        print(f"empty daemon: RSS {empty:.1f} MB", flush=True)
        for size in args.sizes:
            result = measure(size, workdir, server, args)
            for when in ("after_start", "after_edits", "after_restart")[: 2 + args.restart]:
                rss = result[when]["rss_mb"]
                print(f"{size:>7,} tasks {when.replace('_', ' '):<12} RSS {rss:6.1f} MB "
                      f"(peak {result[when]['peak_rss_mb']:6.1f})  "
                      f"{per_task_kb(rss, empty, size):4.2f} KB/task", flush=True)  # fmt: skip
            syncs = ", ".join(f"{k} {v:.1f} ms" for k, v in result["sync_ms"].items())
            print(f"{size:>7,} tasks first sync {result['first_sync_s']:.1f} s; "
                  f"median daemon sync: {syncs}", flush=True)  # fmt: skip
        print(f"load average {fmt_load(list(load_start))} at start, "
              f"{fmt_load(list(os.getloadavg()))} at the end")  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
