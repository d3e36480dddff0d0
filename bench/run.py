"""`python -m bench [--fast] [--sizes N ...] [--repeat N] [--out PATH]`: run every measurement
on towns of each size against a redis-server of our own, print the table, write the JSON.

Exit status: 0 whatever the timings; 1 when a measurement could not be made (a daemon that
died, a change that never arrived); a bug in the harness itself raises.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter, sleep
from typing import Any

import redis

import ttsyncd
from bench import report
from bench.cold import measure_cold
from bench.live import LiveTown, burst, file_floor, idle, redis_to_file, save_to_redis
from bench.procs import REPO_ROOT, BenchError, Daemon, RedisServer, clean_env, memory_mb
from bench.town import make_town, plan_text, reset_files, town_name
from ttsyncd import log
from ttsyncd.config import SyncSettings
from ttsyncd.tinytown import register_agent

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
READY_TIMEOUT_S = 300.0  # the first sync of a big town, on a slow machine

# Each memory reading waits this long with the daemon idle: an idle daemon hands the heap its
# syncs freed back after RELEASE_AFTER_IDLE_S (2 s), and a reading taken before would count
# it (bench.memory reads the same way).
SETTLE_S = 4.0


@dataclass(frozen=True)
class Params:
    sizes: list[int]
    repeat: int  # latency samples per direction and size
    cold_repeat: int  # cold push/pull runs per size (the median is reported); 0: none
    idle_s: float  # idle window, at the largest size
    burst: int  # Redis updates in the burst
    burst_over_s: float
    fast: bool


def parse_args(argv: list[str] | None) -> tuple[Params, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ttsyncd against its targets, a tinytown-0.10-style baseline and "
        "the pipelined limit. Prints a table, writes a JSON report; never fails on time.",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="small and quick, for CI: sizes 50 200, 5 samples, idle 3 s, burst of 100",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="town sizes in tasks (default: 100 1000 10000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="latency samples per direction and size (default 30; fast 5)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="S",
        help="idle CPU window at the largest size (default 30; fast 3)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        metavar="N",
        help="Redis updates sent over one second (default 1000; fast 100)",
    )
    parser.add_argument(
        "--no-cold",
        action="store_true",
        help="skip the cold push/pull figures (minutes at 100,000 tasks): the live ones only",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="PATH",
        help="the JSON report (default: bench/results/latest.json)",
    )
    args = parser.parse_args(argv)
    fast = bool(args.fast)
    sizes = sorted(set(args.sizes or ([50, 200] if fast else [100, 1000, 10_000])))
    params = Params(
        sizes=sizes,
        repeat=args.repeat or (5 if fast else 30),
        cold_repeat=0 if args.no_cold else 1 if fast else 3,
        idle_s=args.idle_seconds or (3.0 if fast else 30.0),
        burst=args.burst or (100 if fast else 1000),
        burst_over_s=1.0,
        fast=fast,
    )
    if min(sizes) < 2 or params.repeat < 1 or params.burst < 1:
        parser.error("sizes must be at least 2, --repeat and --burst at least 1")
    if params.repeat > min(sizes):
        parser.error(f"--repeat {params.repeat} needs towns of at least that many tasks")
    return params, args.out


def main(argv: list[str] | None = None) -> int:
    params, out = parse_args(argv)
    # The engine runs in this process for the cold figures: keep its logs out of the table.
    log.configure("warning", "json")
    started = perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="ttb-"))  # short: unix socket paths max ~107 bytes
    server: RedisServer | None = None
    results: dict[int, dict[str, Any]] = {}
    try:
        server = RedisServer(workdir / "redis")
        machine = machine_info(server)
        print(header(params, machine), flush=True)
        progress(started, "empty town: daemon RSS")
        machine["empty_daemon"] = empty_daemon_memory(workdir, server)
        for size in params.sizes:
            progress(started, f"{size:,} tasks")
            results[size] = measure_size(size, workdir, server, params, started)
        machine["loadavg_end"] = list(os.getloadavg())
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    debounce = SyncSettings()  # the towns have no ttsyncd.toml: the daemon runs the defaults
    empty_rss = machine.get("empty_daemon", {}).get("rss_mb")
    judged = report.judged_size(params.sizes)
    rows = [
        row
        for size in params.sizes
        for row in report.rows_for(
            size, results[size], debounce, judged=size == judged, empty_rss_mb=empty_rss
        )
    ]
    rows += report.growth_rows(results)
    took = perf_counter() - started
    print()
    print(report.table(rows))
    print()
    print(
        f"Targets are judged at {judged:,} tasks; (met) / (NOT met) at other sizes are for "
        "reference.\nTimings never fail the run. "
        f"Load average {fmt_load(machine['loadavg_start'])} at start, "
        f"{fmt_load(machine['loadavg_end'])} at the end."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(took, 1),
        "machine": machine,
        "parameters": {**asdict(params), "judged_size": judged, "debounce": asdict(debounce)},
        "results": {str(size): result for size, result in results.items()},
        "rows": report.rows_json(rows),
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"JSON report: {out} ({took:.0f} s)")
    failed = [size for size, result in results.items() if "error" in result]
    if failed:
        print(f"could not measure: {', '.join(f'{s:,} tasks' for s in failed)}", file=sys.stderr)
    return 1 if failed else 0


def measure_size(
    size: int, workdir: Path, server: RedisServer, params: Params, started: float
) -> dict[str, Any]:
    town = make_town(workdir / f"town-{size}", size)
    result: dict[str, Any] = {"plan_bytes": (town / "tasks.toml").stat().st_size}
    try:
        if params.cold_repeat:
            progress(started, f"  cold push / pull x{params.cold_repeat}")
            result["cold"] = measure_cold(town, server.url, size, params.cold_repeat)
        result["live"] = {}
        measure_live(town, size, server, params, result["live"], started)
    except (BenchError, redis.RedisError, OSError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        print(f"  {size:,} tasks: {result['error']}", file=sys.stderr)
    return result


def measure_live(
    town: Path,
    size: int,
    server: RedisServer,
    params: Params,
    out: dict[str, Any],
    started: float,
) -> None:
    """Start the daemon on a fresh copy of the town and take the live measurements into
    `out` as they come (a later failure keeps the earlier figures)."""
    client = server.client()
    client.flushall()
    reset_files(town, plan_text(size))
    agent = register_agent(client, town_name(size), "bench-agent")
    daemon = Daemon(town, server.url, town.parent / f"daemon-{size}.log")
    try:
        progress(started, "  daemon: first sync")
        daemon.wait_ready(READY_TIMEOUT_S)
        out["first_sync_s"] = perf_counter() - daemon.started
        live = LiveTown(town, size, daemon, client, db=0, debounce=SyncSettings())
        live.settle()
        sleep(SETTLE_S)
        out["memory_after_start"] = memory_mb(daemon.pid)
        if size == max(params.sizes):
            out["command_start"] = command_start_ms(town)
        progress(started, f"  save -> Redis x{params.repeat}")
        out["save_to_redis"] = with_summary(save_to_redis(live, params.repeat))
        progress(started, f"  Redis -> file x{params.repeat}")
        out["redis_to_file"] = with_summary(redis_to_file(live, params.repeat, agent))
        progress(started, f"  file floor (write, fsync, rename) x{params.repeat}")
        floor = file_floor(live, params.repeat)
        out["file_floor"] = {**report.latency_summary(floor["samples_s"]), **floor}
        progress(started, f"  burst of {params.burst:,}")
        out["burst"] = burst(live, params.burst, params.burst_over_s)
        if size == max(params.sizes):
            progress(started, f"  idle {params.idle_s:.0f} s")
            out["idle"] = idle(live, params.idle_s)
        live.settle()
        sleep(SETTLE_S)
        out["memory"] = memory_mb(daemon.pid)
    finally:
        out["stop_exit_code"] = daemon.stop()
        client.close()


def command_start_ms(town: Path, runs: int = 15) -> dict[str, float]:
    """Median milliseconds of `python -m ttsyncd --version` and of `status` (the daemon of
    `town` running): a new process from start to exit, as a user or a script runs them."""
    env = clean_env()
    medians: dict[str, float] = {}
    for name, args in (("version", ["--version"]), ("status", ["--town", str(town), "status"])):
        times = []
        for _ in range(runs):
            started = perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "ttsyncd", *args], capture_output=True, env=env
            )
            times.append((perf_counter() - started) * 1000)
            if done.returncode != 0:
                raise BenchError(f"`ttsyncd {' '.join(args)}` failed: {done.stderr!r}")
        medians[name] = statistics.median(times)
    return medians


def empty_daemon_memory(workdir: Path, server: RedisServer) -> dict[str, float]:
    """The RSS of a daemon on a town with no tasks, after its first sync: what the per-task
    memory figures are counted above."""
    town = make_town(workdir / "town-empty", 0)
    server.client().flushall()
    daemon = Daemon(town, server.url, workdir / "daemon-empty.log")
    try:
        daemon.wait_ready(READY_TIMEOUT_S)
        sleep(SETTLE_S)
        return memory_mb(daemon.pid)
    finally:
        daemon.stop()


def with_summary(measured: dict[str, Any]) -> dict[str, Any]:
    return {
        **report.latency_summary(measured["samples_s"]),
        "daemon_sync_ms_median": report.median_ms(measured["daemon_sync_ms"]),
        **measured,
    }


def machine_info(server: RedisServer) -> dict[str, Any]:
    client = server.client()
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "redis_server": redis_version,
        "redis_server_binary": str(server.binary),
        "ttsyncd": ttsyncd.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": uncommitted(),
        "loadavg_start": list(os.getloadavg()),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def uncommitted() -> list[str]:
    """ttsyncd's files that differ from the commit: the numbers are of the working tree."""
    listing = git("status", "--porcelain", "--", "ttsyncd")
    return [line[3:] for line in listing.splitlines()] if listing else []


def header(params: Params, machine: dict[str, Any]) -> str:
    sizes = ", ".join(f"{s:,}" for s in params.sizes)
    mode = " (fast)" if params.fast else ""
    changed = len(machine["uncommitted"])
    dirty = f" + {changed} uncommitted file{'s' * (changed != 1)}" if changed else ""
    return (
        f"ttsyncd benchmark{mode}: towns of {sizes} tasks; {params.repeat} samples per latency; "
        f"cold x{params.cold_repeat}; burst of {params.burst:,} over {params.burst_over_s:.0f} s; "
        f"idle {params.idle_s:.0f} s\n"
        f"machine: {machine['usable_cores']} cores ({machine['cpu_model']}), "
        f"{machine['python']}, redis-server {machine['redis_server']}, ttsyncd "
        f"{machine['ttsyncd']} ({machine['git_commit']}{dirty}), load average "
        f"{fmt_load(machine['loadavg_start'])}"
    )


def fmt_load(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def progress(started: float, what: str) -> None:
    print(f"[{perf_counter() - started:6.1f} s] {what}", file=sys.stderr, flush=True)
