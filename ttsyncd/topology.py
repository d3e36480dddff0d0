"""What kind of Redis deployment serves the town, as `status` shows it.

Only addresses, never credentials: `kind` is "standalone" for one server; a Sentinel-managed
primary or a Redis Cluster fills in `primaries` (host:port) with the node(s) in charge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ttsyncd.config import Endpoint


@dataclass(frozen=True)
class Topology:
    kind: str = "standalone"
    primaries: tuple[str, ...] = ()  # host:port, no credentials

    def describe(self) -> str:
        """One line for the text `status`, e.g. `standalone`."""
        return f"{self.kind} ({', '.join(self.primaries)})" if self.primaries else self.kind

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "primaries": list(self.primaries)}


def topology_of(endpoint: Endpoint) -> Topology:
    """The topology an endpoint names. Every endpoint ttsyncd accepts so far is one server;
    Sentinel and Cluster endpoints are told apart here."""
    return Topology()


def describe(status_topology: dict[str, Any]) -> str:
    """`describe()` of a topology as the status JSON carries it."""
    return Topology(status_topology["kind"], tuple(status_topology["primaries"])).describe()
