"""`python -m bench.failover [--cluster] [--rounds N] [--seed S] [--out PATH]`: failover figures.

A primary, its replica and one Sentinel (quorum 1, down after 500 ms) on loopback, the real
daemon on `redis+sentinel://`, and per round a failover while both sides are edited: a
handover (SENTINEL FAILOVER: the old primary stays up and is demoted), then the primary
SIGKILLed (Sentinel promotes the replica; the killed one comes back empty, as a replica).
Prints and writes: the time from the primary's loss to the daemon's first successful sync
after it, edits made, edits lost (must be 0).

`--cluster`: a Redis Cluster of three primaries, each with a replica (node timeout 1 s), and per
round a random primary handed over (CLUSTER FAILOVER on its replica) then one SIGKILLed (the
cluster promotes its replica; the killed one comes back empty, as the new primary's replica).

The scenarios are those `tests/test_sentinel.py` and `tests/test_cluster_failover.py` run in
short form, with the tests' harness
that starts the servers (tests/topologies.py), so it is imported at run time from there: the
benchmark needs a clone of the repository, as `python -m bench` does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import REPO_ROOT
from ttsyncd.embedded import find_redis_server

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover",
        description="Sentinel (or Cluster) failovers under edits on both sides: time from the "
        "primary's loss to the daemon's first sync after it, edits made, edits lost.",
    )
    parser.add_argument("--cluster", action="store_true",
                        help="a 3-primary, 3-replica Cluster instead of Sentinel")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, metavar="N",
                        help="handover + kill pairs (default 5)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random choices")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="the JSON report (default: bench/results/failover.json, "
                        "or failover-cluster.json)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sys.path.insert(0, str(REPO_ROOT))
    name = "test_cluster_failover" if args.cluster else "test_sentinel"
    scenario: Any = importlib.import_module(f"tests.{name}")
    measure = scenario.measure_cluster_failovers if args.cluster else scenario.measure_failovers
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rounds = [scenario.HANDOVER, scenario.KILL] * args.rounds
    with tempfile.TemporaryDirectory(prefix="ttbf-") as tmp:
        measured = measure(Path(tmp), rounds, random.Random(seed))
    summary: dict[str, Any] = measured.summary()
    kind = "Cluster" if args.cluster else "Sentinel"
    print(f"{kind} failover ({find_redis_server()}, seed {seed}):")
    for name, value in summary.items():
        print(f"  {name}: {value}")
    out = args.out or RESULTS / ("failover-cluster.json" if args.cluster else "failover.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "topology": kind.lower(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "redis_server": str(find_redis_server()),
        "seed": seed,
        "summary": {k: list(v) if isinstance(v, tuple) else v for k, v in summary.items()},
        "figures": measured.to_json(),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {out}", file=sys.stderr)
    return 1 if measured.edits_lost else 0


if __name__ == "__main__":
    sys.exit(main())
