"""systemd's notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1, RELOADING=1).

Written here rather than taken from python-systemd: that needs libsystemd headers to build,
and the protocol is one datagram to $NOTIFY_SOCKET.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send `lines` to systemd; False (and nothing sent) when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the unit's WatchdogSec), None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
