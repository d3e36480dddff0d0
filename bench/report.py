"""Numbers into rows: each metric next to its target, judged met / NOT met, as a table and as
the JSON report's `rows`. Judging never fails the run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ttsyncd.config import SyncSettings

TARGET_SIZE = 10_000  # the targets are set at 10,000 tasks ("unless said")
GROWTH_MS = 30  # past TARGET_SIZE: how much a latency may grow (save -> Redis), or exceed its floor


@dataclass(frozen=True)
class Row:
    metric: str
    tasks: int
    value: str
    target: str = ""
    met: bool | None = None  # None: no target on this row
    judged: bool = True  # False: the target is shown for reference only (not the target size)

    def verdict(self) -> str:
        if self.met is None:
            return ""
        word = "met" if self.met else "NOT met"
        return word if self.judged else f"({word})"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def judged_size(sizes: Sequence[int]) -> int:
    return TARGET_SIZE if TARGET_SIZE in sizes else max(sizes)


def rows_for(
    size: int,
    result: dict[str, Any],
    debounce: SyncSettings,
    judged: bool,
    empty_rss_mb: float | None = None,
) -> list[Row]:
    """The rows of one town's results. `judged`: this is the size the targets are set at;
    `empty_rss_mb`: a daemon's RSS on a town with no tasks."""
    rows: list[Row] = []

    def row(
        metric: str, value: str, target: str = "", met: bool | None = None, every_size: bool = False
    ) -> None:
        rows.append(Row(metric, size, value, target, met, judged or every_size))

    if "error" in result:
        row("ERROR", result["error"].splitlines()[0])
    live = result.get("live", {})
    if "save_to_redis" in live:
        save = live["save_to_redis"]
        limit = debounce.file_debounce_ms + 20
        row(
            "save -> Redis p50 / p99",
            f"{save['p50_ms']:.1f} / {save['p99_ms']:.1f} ms",
            f"p50 <= {limit} ms (debounce {debounce.file_debounce_ms} + 20)",
            save["p50_ms"] <= limit,
        )
        writes, others = save["hash_writes_per_save"], save["other_redis_writes_per_save"]
        row(
            "  task hashes written per save",
            f"{span(writes)} EVALSHA each"
            + (f", {sum(others)} other writes" if any(others) else ""),
            "exactly 1",
            set(writes) == {1} and not any(others),
            every_size=True,
        )
        rewrites = save["file_rewrites_per_save"]
        row(
            "  file rewritten after a save",
            f"{sum(rewrites)} of {len(rewrites)} saves",
            "never",
            not any(rewrites),
            every_size=True,
        )
    if "redis_to_file" in live:
        update = live["redis_to_file"]
        limit = debounce.redis_debounce_ms + 25
        row(
            "Redis -> file p50 / p99",
            f"{update['p50_ms']:.1f} / {update['p99_ms']:.1f} ms",
            f"p50 <= {limit} ms (debounce {debounce.redis_debounce_ms} + 25)",
            update["p50_ms"] <= limit,
        )
        rows += floor_rows(size, update, live.get("file_floor"), debounce)
        file_writes = update["file_writes_per_update"]
        redis_writes = update["daemon_redis_writes_per_update"]
        row(
            "  writes per tinytown update",
            f"file {span(file_writes)}, Redis {span(redis_writes)} each",
            "file 1, Redis 0",
            set(file_writes) == {1} and not any(redis_writes),
            every_size=True,
        )
    cold = result.get("cold")
    if cold:
        seconds = {name: cold[name]["median_s"] for name in cold if isinstance(cold[name], dict)}
        push, pull = seconds["ttsyncd_push"], seconds["ttsyncd_pull"]
        parse = seconds["ttsyncd_parse"]
        row(
            "cold parse: ttsyncd | toml_rs | tomllib",
            f"{ms(parse)} | {ms(seconds['toml_rs_parse'])} | {ms(seconds['tomllib_parse'])}",
        )
        row(
            "  cold parse vs toml_rs whole parse",
            f"{parse / seconds['toml_rs_parse']:.1f}x",
            "<= 2x",
            parse <= 2 * seconds["toml_rs_parse"],
        )
        process = seconds["ttsyncd_push_process"]
        row(
            "cold `ttsyncd push`, a new process",
            f"{ms(process)} ({process / seconds['limit_write']:.1f}x the limit)",
            "<= 3x limit",
            process <= 3 * seconds["limit_write"],
        )
        row(
            "cold push: ttsyncd | limit | tinytown",
            f"{ms(push)} | {ms(seconds['limit_write'])} | {ms(seconds['baseline_push'])}",
        )
        row(
            "  cold push vs limit (pipelined HSET)",
            f"{push / seconds['limit_write']:.1f}x",
            "<= 1.5x",
            push <= 1.5 * seconds["limit_write"],
        )
        row(
            "  cold push vs tinytown-0.10 style",
            faster(seconds["baseline_push"], push),
            ">= 4x faster",
            push * 4 <= seconds["baseline_push"],
        )
        row(
            "cold pull: ttsyncd | limit+file | tinytown",
            f"{ms(pull)} | {ms(seconds['limit_read_plus_file'])} | {ms(seconds['baseline_pull'])}",
        )
        row(
            "  cold pull vs limit (read + write file)",
            f"{pull / seconds['limit_read_plus_file']:.1f}x",
            "<= 1.5x",
            pull <= 1.5 * seconds["limit_read_plus_file"],
        )
        row(
            "  cold pull vs tinytown-0.10 style",
            faster(seconds["baseline_pull"], pull),
            ">= 4x faster",
            pull * 4 <= seconds["baseline_pull"],
        )
    if "burst" in live:
        burst = live["burst"]
        row(
            f"burst of {burst['updates']} updates: file writes",
            f"{burst['file_writes']} in {burst['sent_over_s']:.2f} s",
            f"<= {burst['allowed_file_writes']} (1 per {debounce.redis_max_wait_ms} ms window)",
            burst["file_writes"] <= burst["allowed_file_writes"],
        )
        row(
            "  converged after the last update",
            ms(burst["converge_s"]),
            "<= 500 ms",
            burst["converge_s"] <= 0.5,
        )
    if "idle" in live:
        idle = live["idle"]
        row(
            f"idle CPU over {idle['window_s']:.0f} s ({idle['notifications']})",
            f"{idle['cpu_percent']:.2f} %",
            "< 1 % with notifications",
            idle["cpu_percent"] < 1 and idle["notifications"] == "keyspace",
        )
    if "memory" in live:
        memory = live["memory"]
        row(
            "daemon RSS (peak)",
            f"{memory['rss_mb']:.1f} MB ({memory['peak_rss_mb']:.1f} MB)",
            "<= 100 MB",
            memory["rss_mb"] <= 100,
        )
    if empty_rss_mb is not None and "memory_after_start" in live and "memory" in live:
        start, end = live["memory_after_start"]["rss_mb"], live["memory"]["rss_mb"]
        per_task = [(mb - empty_rss_mb) * 1024 * 1024 / size / 1000 for mb in (start, end)]
        row(
            "  RSS per task above an empty daemon",
            f"{per_task[0]:.1f} KB after start, {per_task[1]:.1f} KB after the run"
            f" (empty {empty_rss_mb:.1f} MB)",
            "<= 2.5 KB",
            max(per_task) <= 2.5,
            every_size=True,
        )
    if "command_start" in live:
        start = live["command_start"]
        row(
            "`ttsyncd --version` | `status` (daemon up)",
            f"{start['version']:.0f} ms | {start['status']:.0f} ms (median, a new process)",
            "<= 80 ms",
            max(start.values()) <= 80,
            every_size=True,
        )
    if "first_sync_s" in live:
        row("daemon start: ready after first sync", ms(live["first_sync_s"]))
    return rows


def floor_rows(
    size: int, update: dict[str, Any], floor: dict[str, Any] | None, debounce: SyncSettings
) -> list[Row]:
    """Redis -> file rewrites the whole plan, so its cost grows with the file: beside its p50,
    the floor measured at this size, and the target past 10,000 tasks (judged at every size):
    the debounce plus what any durable rewrite costs, + GROWTH_MS."""
    if floor is None:
        return []
    ceiling = debounce.redis_debounce_ms + floor["p50_ms"] + GROWTH_MS
    rows = [
        Row("  floor: write + fsync + rename p50", size,
            f"{floor['p50_ms']:.1f} ms ({floor['bytes'] / 1e6:.1f} MB)"),
        Row("  p50 vs debounce + floor", size,
            f"{update['p50_ms']:.1f} ms; {update['p50_ms'] - ceiling + GROWTH_MS:+.1f} "
            f"over {debounce.redis_debounce_ms} + {floor['p50_ms']:.1f}",
            f"<= {GROWTH_MS} ms over", update["p50_ms"] <= ceiling),
    ]  # fmt: skip
    if update.get("daemon_sync_ms_median") is not None:
        rows.append(Row("  the daemon's sync (median; write included)", size,
                        f"{update['daemon_sync_ms_median']:.1f} ms"))  # fmt: skip
    return rows


def growth_rows(results: dict[int, dict[str, Any]]) -> list[Row]:
    """Save -> Redis at each size above TARGET_SIZE against TARGET_SIZE's, in the same run: it
    may grow by at most GROWTH_MS (the daemon merges only what changed, so the plan's size
    should barely matter)."""
    base = results.get(TARGET_SIZE, {}).get("live", {}).get("save_to_redis")
    if base is None:
        return []
    rows = []
    for size, result in sorted(results.items()):
        save = result.get("live", {}).get("save_to_redis")
        if size <= TARGET_SIZE or save is None:
            continue
        grown = save["p50_ms"] - base["p50_ms"]
        rows.append(
            Row(
                f"save -> Redis p50 growth from {TARGET_SIZE:,}",
                size,
                f"{grown:+.1f} ms ({base['p50_ms']:.1f} -> {save['p50_ms']:.1f})",
                f"<= {GROWTH_MS} ms",
                grown <= GROWTH_MS,
            )
        )
    return rows


def span(values: Sequence[int]) -> str:
    """`3` when every sample says 3, else `min..max`."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}..{high}"


def faster(baseline: float, ours: float) -> str:
    ratio = baseline / ours
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def table(rows: Sequence[Row]) -> str:
    """One line per metric and size, grouped by metric in the order metrics first appear (so an
    indented sub-metric stays under its parent); a blank line before each top-level metric."""
    order = list(dict.fromkeys(r.metric for r in rows))
    ordered = [r for metric in order for r in rows if r.metric == metric]
    headers = ("metric", "tasks", "value", "target", "result")
    cells = [(r.metric, f"{r.tasks:,}", r.value, r.target, r.verdict()) for r in ordered]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(cell: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    previous = ""
    for cell in cells:
        if cell[0] != previous and not cell[0].startswith(" ") and previous:
            lines.append("")
        previous = cell[0]
        lines.append(line(cell))
    return "\n".join(lines)


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) | {"verdict": r.verdict()} for r in rows]


def median_ms(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
