"""`python -m bench.pull [--size N] [--pulls N] [--profile]`: one agent update pulled into a big
town, in this process, as the daemon runs it: the same PlanReader, mirror (TownMirror) and
state store kept from one sync to the next, a scoped pull of the one task each time.

A town of `--size` tasks (bench/town.py's plan) on a redis-server of its own, synced whole once;
then, `--pulls` times, a tinytown-style update of one task (HDEL + HSET, as an agent starting
it), the mirror told of that key, and `engine.run_sync(pull=True)` timed. Between two pulls the
file is checked for the echo of the write, as the daemon's watcher makes it do. Prints each
pull's time, the median and the minimum, and the page faults each pull took (a fresh buffer
as big as the plan costs thousands in a process this big); `--profile`: cProfile's top
functions over all the pulls.

The live figure (`python -m bench`) is what the targets are judged on; this one says where a
pull's time goes, without the daemon's loop, the debounce or another process around it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.cold import settings_for
from bench.procs import RedisServer, wait_until
from bench.town import make_town, plan_id, town_name
from ttsyncd import log
from ttsyncd.codec import rfc3339
from ttsyncd.engine import SyncRequest, run_sync, state_store_for
from ttsyncd.mirror import TownMirror
from ttsyncd.plan import PlanReader
from ttsyncd.scope import OwedTasks
from ttsyncd.sides import FileSide, RedisSide, Sides
from ttsyncd.tinytown import set_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pull", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000, help="tasks (default 100,000)")
    parser.add_argument("--pulls", type=int, default=20, help="pulls timed (default 20)")
    parser.add_argument("--profile", action="store_true", help="cProfile the pulls")
    args = parser.parse_args(argv)
    log.configure("warning", "json")
    workdir = Path(tempfile.mkdtemp(prefix="ttp-"))  # short: unix socket paths max ~107 bytes
    server = RedisServer(workdir / "redis")
    try:
        return measure(workdir, server, args.size, args.pulls, profile=args.profile)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def measure(workdir: Path, server: RedisServer, size: int, pulls: int, *, profile: bool) -> int:
    town, name = make_town(workdir / "town", size), town_name(size)
    settings = settings_for(town, server.url)
    client = server.client()
    wait_until(lambda: client.ping(), 10, "redis-server")
    file_side = FileSide(PlanReader(settings.tasks_file))
    mirror, owed, store = TownMirror(client, name), OwedTasks(), state_store_for(settings)
    mirror.reload()
    owed.note(mirror.take_changes())
    started = time.perf_counter()
    report = run_sync(settings, Sides(file_side, RedisSide(client, name, mirror)),
                      SyncRequest(push=True, pull=True), store)  # fmt: skip
    print(f"{size:,} tasks: first (whole) sync {time.perf_counter() - started:.1f} s")
    owed.synced(report.plan, report.owed_push | report.owed_pull)
    gc.collect()
    gc.freeze()  # as the daemon does after a whole-town sync
    owed.note(mirror.take_changes())
    profiler = cProfile.Profile() if profile else None
    times_ms: list[float] = []
    faults: list[int] = []
    for n in range(pulls):
        task = mirror.index.identified.by_plan_id[plan_id((size // 2 + 37 * n) % size)]
        fields: dict[str, str] = client.hgetall(task.key)  # type: ignore[assignment]
        stamp = rfc3339(datetime.now(UTC))
        running = fields.get("state") != "running"
        fields.update(state="running" if running else "assigned", updated_at=stamp)
        set_task(client, name, fields)
        mirror.refresh([task.key])
        owed.note(mirror.take_changes())
        request = SyncRequest(push=False, pull=True, scope=owed.scope())
        sides = Sides(file_side, RedisSide(client, name, mirror))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        report = run_sync(settings, sides, request, store)
        times_ms.append((time.perf_counter() - started) * 1000)
        if profiler is not None:
            profiler.disable()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        if not report.file_written:
            print(f"pull {n + 1} wrote nothing", file=sys.stderr)
            return 1
        owed.synced(report.plan, report.owed_push | report.owed_pull)
        file_side.differs()  # the echo of the write, as the daemon's watcher has it checked
    print("pulls, ms:", " ".join(f"{t:.1f}" for t in times_ms))
    print("page faults:", " ".join(map(str, faults)))
    print(f"median {statistics.median(times_ms):.1f} ms, min {min(times_ms):.1f} ms "
          f"(the first builds the plan's index of ids)")  # fmt: skip
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
