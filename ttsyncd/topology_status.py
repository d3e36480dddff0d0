"""The town's Redis topology as `status` shows it: the kind (one server, Sentinel, Cluster) and
its primaries. Plain data, no redis-py: the CLI words a daemon's status with it (topology.py
finds it out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

STANDALONE: Final = "standalone"
SENTINEL: Final = "sentinel"
CLUSTER: Final = "cluster"


@dataclass(frozen=True)
class Topology:
    """What `status` shows: the kind, and the primaries as host:port (no credentials ever)."""

    kind: str  # standalone | sentinel | cluster
    primaries: tuple[str, ...] = ()  # sentinel: the current primary; cluster: every primary
    service: str | None = None  # sentinel: the service name

    def to_json(self) -> dict[str, Any]:
        service = {"service": self.service} if self.service is not None else {}
        return {"kind": self.kind, "primaries": list(self.primaries), **service}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Topology:
        return Topology(str(data["kind"]), tuple(data.get("primaries") or ()), data.get("service"))

    def describe(self) -> str:
        """One line for `status`: addresses only, never a credential."""
        if self.kind == SENTINEL:
            primary = self.primaries[0] if self.primaries else "not known yet"
            return f"sentinel (service {self.service!r}, primary {primary})"
        if self.kind == CLUSTER:
            if not self.primaries:
                return "cluster (primaries not known yet)"
            return f"cluster ({len(self.primaries)} primaries: {', '.join(self.primaries)})"
        return STANDALONE


def describe(status_topology: dict[str, Any]) -> str:
    """`describe()` of a topology as the status JSON carries it."""
    return Topology.from_json(status_topology).describe()
