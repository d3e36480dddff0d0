"""What `status` says about the kind of Redis deployment: addresses at most, never a secret."""

from __future__ import annotations

from ttsyncd.endpoints import endpoint_from_url
from ttsyncd.topology import topology_of
from ttsyncd.topology_status import Topology, describe

PASSWORD = "Zq5-topology-S3CRET"


def test_one_server_is_standalone() -> None:
    for url in (f"rediss://u:{PASSWORD}@h:6390/0", "redis://h", "unix:///run/r.sock"):
        topology = topology_of(endpoint_from_url(url, "t"))
        assert topology.describe() == "standalone"
        assert topology.to_json() == {"kind": "standalone", "primaries": []}
        assert PASSWORD not in repr(topology)


def test_primaries_are_listed_after_the_kind() -> None:
    sentinel = Topology("sentinel", ("10.0.0.2:6379",), "towns")
    assert sentinel.describe() == "sentinel (service 'towns', primary 10.0.0.2:6379)"
    assert describe(sentinel.to_json()) == sentinel.describe()
    cluster = Topology("cluster", ("a:7000", "b:7001", "c:7002"))
    assert describe(cluster.to_json()) == "cluster (3 primaries: a:7000, b:7001, c:7002)"
