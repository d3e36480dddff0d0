"""A Redis Cluster primary with no replica and no persistence that restarts: it comes back with
its slots and none of its keys. Its share of the tasks must come back from the file, and the
file must not lose them: each primary carries an epoch marker of its own, so the sync knows
which slots were emptied, and treats their tasks as new to Redis rather than deleted there.
(The cluster is the test's own, on ports the OS picks: each test kills nodes.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from tests.daemon_harness import QUIET_S, Daemon, FileWrites, wait_until
from tests.helpers import make_town, plan_records, run_cli, town_records
from tests.topologies import Cluster, TcpServer, redis_cluster
from ttsyncd.base_state import markers_lost
from ttsyncd.markers import Marker, epoch_key, read_markers
from ttsyncd.state import SyncState
from ttsyncd.store import Snapshot

TOWN = "shards"
COUNT = 30  # enough that every primary holds some (checked)


def plan_text(count: int) -> str:
    return "# A plan on a cluster\n" + "".join(
        f'\n# task {n}\n[[tasks]]\nid = "t{n:02d}"\ndescription = "task {n}"\n'
        for n in range(count)
    )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as running:
        yield running


def town_keys(client: redis.cluster.RedisCluster) -> set[str]:
    return set(client.scan_iter(match=f"tt:{TOWN}:task:*"))


def keys_on(node: TcpServer) -> set[str]:
    return set(node.tcp_client().scan_iter(match=f"tt:{TOWN}:task:*"))


def holder_of(cluster: Cluster, key: str) -> TcpServer:
    return next(node for node in cluster.nodes if node.tcp_client().exists(key))


def victims(cluster: Cluster) -> list[TcpServer]:
    """A primary without the main epoch marker (epoch_key), then the one holding it."""
    main_holder = holder_of(cluster, epoch_key(TOWN))
    others = [node for node in cluster.nodes if node is not main_holder]
    return [others[0], main_holder]


def cluster_ok(cluster: Cluster) -> bool:
    try:
        infos = [node.tcp_client().execute_command("CLUSTER INFO") for node in cluster.nodes]
    except redis.ConnectionError:
        return False
    return all(info["cluster_state"] == "ok" for info in infos)


def restart_empty(cluster: Cluster, node: TcpServer) -> None:
    """SIGKILL, then start again on the same port and cluster config: same slots, no data."""
    node.kill()
    node.start()
    assert node.tcp_client().dbsize() == 0
    wait_until(lambda: cluster_ok(cluster), 60.0, "cluster_state:ok again")


def test_one_shot_pull_and_push_bring_an_emptied_primarys_tasks_back(
    tmp_path: Path, cluster: Cluster
) -> None:
    town = make_town(tmp_path / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    pushed = run_cli(town, "push", redis_url=cluster.url)
    assert pushed.returncode == 0, pushed.stderr
    original = path.read_bytes()
    client = cluster.client()
    assert len(town_keys(client)) == COUNT
    markers = read_markers(client, TOWN)
    assert len(markers) == 3 and all(m.token for m in markers.values())  # one per primary
    emptied = victims(cluster)
    for victim in emptied:
        lost = keys_on(victim)
        assert 0 < len(lost) < COUNT / 2  # under the deletion guard's share: no refusal
        restart_empty(cluster, victim)
        client = cluster.client()
        assert town_keys(client) == town_keys(client) - lost
        assert len(town_keys(client)) == COUNT - len(lost)

        # A pull takes nothing out of the file: those tasks are not "deleted in Redis".
        pulled = run_cli(town, "pull", redis_url=cluster.url)
        assert pulled.returncode == 0, pulled.stderr
        assert "came back without their data" in pulled.stderr
        assert path.read_bytes() == original
        # A push puts them back; the file is still untouched.
        pushed = run_cli(town, "push", redis_url=cluster.url)
        assert pushed.returncode == 0, pushed.stderr
        assert f"created {len(lost)}," in pushed.stdout
        assert len(town_keys(client)) == COUNT and keys_on(victim) == lost
        assert path.read_bytes() == original
        assert plan_records(path) == town_records(client, TOWN)
        checked = run_cli(town, "check", redis_url=cluster.url)
        assert "in sync" in checked.stdout, checked.stdout + checked.stderr

    # The other primaries' tasks kept their base: a deletion there is still a deletion.
    survivor = next(n for n in cluster.nodes if n not in emptied)
    gone = sorted(keys_on(survivor))[0]
    client.delete(gone)
    pulled = run_cli(town, "pull", redis_url=cluster.url)
    assert pulled.returncode == 0, pulled.stderr
    assert "deleted 1" in pulled.stdout
    assert len(plan_records(path)) == COUNT - 1


def test_the_daemon_repopulates_an_emptied_primary_and_never_writes_the_file(
    tmp_path: Path, cluster: Cluster
) -> None:
    town = make_town(tmp_path / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    original = path.read_bytes()
    daemon = Daemon(town, cluster.url)
    try:
        assert daemon.wait_ready()["last_error"] is None, daemon.log()
        client = cluster.client()
        wait_until(lambda: len(town_keys(client)) == COUNT, what="the first push")
        daemon.wait_idle()
        writes = FileWrites(path)
        for victim in victims(cluster):
            lost = keys_on(victim)
            assert lost
            restart_empty(cluster, victim)
            client = cluster.client()
            wait_until(lambda: len(town_keys(client)) == COUNT,  # noqa: B023
                       60.0, "the emptied primary's tasks back")  # fmt: skip
            assert keys_on(victim) == lost
            wait_until(lambda: (daemon.status() or {}).get("last_error") is None, 20.0,
                       "the daemon to report no error")  # fmt: skip
        time.sleep(QUIET_S)
        daemon.wait_idle()
        writes.stop()
        assert writes.count_since(1) == 0, "the daemon wrote tasks.toml"
        assert path.read_bytes() == original
        assert "came back without its data" in daemon.log()
        assert plan_records(path) == town_records(client, TOWN)
    finally:
        assert daemon.terminate() == 0, daemon.log()


# ---------------------------------------------------------------------------- the rule itself


def snapshot_with(epoch: str | None, markers: dict[str, tuple[str | None, range]]) -> Snapshot:
    return Snapshot(
        epoch=epoch,
        markers={k: Marker(token, frozenset(slots)) for k, (token, slots) in markers.items()},
    )


def test_which_markers_say_which_slots_were_emptied() -> None:
    main, one, two = epoch_key(TOWN), f"{epoch_key(TOWN)}:1", f"{epoch_key(TOWN)}:7"
    state = SyncState(redis_epoch="e", redis_markers={one: "m1", two: "m2"})
    now = {main: ("e", range(0, 5)), one: ("m1", range(5, 10)), two: ("m2", range(10, 16))}
    assert markers_lost(state, snapshot_with("e", now), TOWN) == (False, frozenset())
    # One primary came back empty (its marker gone, or set anew by another process).
    for token in (None, "other"):
        lost = {**now, one: (token, range(5, 10))}
        assert markers_lost(state, snapshot_with("e", lost), TOWN) == (
            False,
            frozenset(range(5, 10)),
        )
    # The main marker's primary: the same, the others' base kept.
    lost = {**now, main: (None, range(0, 5))}
    assert markers_lost(state, snapshot_with(None, lost), TOWN) == (False, frozenset(range(5)))
    # Every marker gone: another Redis (or all of it restarted empty).
    gone = {k: (None, slots) for k, (_token, slots) in now.items()}
    assert markers_lost(state, snapshot_with(None, gone), TOWN) == (True, frozenset())
    # A marker the base does not know (a new primary), or one the slot map no longer picks
    # (resharding), is not compared.
    moved = {main: ("e", range(0, 8)), f"{epoch_key(TOWN)}:9": (None, range(8, 16))}
    assert markers_lost(state, snapshot_with("e", moved), TOWN) == (False, frozenset())
    # A base from before per-primary markers (or one server): the main marker alone decides.
    old = SyncState(redis_epoch="e")
    assert markers_lost(old, snapshot_with("e", {**now, one: (None, range(5, 10))}), TOWN) == (
        False,
        frozenset(),
    )
    assert markers_lost(old, snapshot_with("x", {}), TOWN) == (True, frozenset())
    assert markers_lost(SyncState(), snapshot_with(None, {}), TOWN) == (False, frozenset())


def test_a_one_shot_command_on_a_cluster_that_lost_a_primary_says_so_in_one_line(
    tmp_path: Path, cluster: Cluster
) -> None:
    """The command connects (a live node answers PING), then meets the dead primary's slots:
    exit 3 and one line, not a traceback; the file untouched."""
    town = make_town(tmp_path / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    assert run_cli(town, "push", redis_url=cluster.url).returncode == 0
    path.write_text(path.read_text().replace("task 3", "task three"))
    edited = path.read_bytes()
    dead = victims(cluster)[0]
    dead.kill()
    alive = [node for node in cluster.nodes if node is not dead]
    url = f"redis://{alive[0].address}/0"
    for command in ("push", "pull", "check"):
        ran = run_cli(town, command, redis_url=url)
        assert ran.returncode == 3, ran.stderr
        assert "Traceback" not in ran.stderr
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and f"failed during the {command}" in lines[0], ran.stderr
        assert path.read_bytes() == edited


def test_a_command_through_the_daemon_on_a_cluster_that_lost_a_primary_says_so_in_one_line(
    tmp_path: Path, cluster: Cluster
) -> None:
    """The daemon serves the town; a primary dies and a push goes through the daemon before
    (or after) its session notices: exit 3 and one line either way, the file untouched."""
    town = make_town(tmp_path / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    daemon = Daemon(town, cluster.url)
    try:
        assert daemon.wait_ready()["last_error"] is None, daemon.log()
        daemon.wait_idle()
        victims(cluster)[0].kill()
        original = path.read_bytes()
        for command in ("push", "check"):
            ran = run_cli(town, command, redis_url=None)
            assert ran.returncode == 3, ran.stdout + ran.stderr
            lines = ran.stderr.strip().splitlines()
            assert len(lines) == 1 and "Redis" in lines[0], ran.stderr
            assert "Error" not in lines[0].split(":")[1], ran.stderr  # no exception's name first
        assert path.read_bytes() == original
    finally:
        daemon.terminate()  # (its exit code is not this test's business: Redis is half gone)
