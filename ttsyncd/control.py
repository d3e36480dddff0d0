"""The control socket `<town>/.tt/ttsyncd.sock`: newline-delimited JSON, one request and one
answer per line, `{"cmd": "status"}` -> `{"ok": true, "result": {...}}` or
`{"ok": false, "error": "..."}`. Mode 0600; a peer of another uid is refused (SO_PEERCRED).

`{"cmd": "subscribe"}` answers once, then keeps the connection: one JSON event per line
(ttsyncd/events.py) until the daemon stops (it closes the connection) or the peer hangs up."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttsyncd.errors import TtsyncdError

if TYPE_CHECKING:  # the serving side's imports; a CLI that only asks (`request`) needs neither
    import asyncio

    import structlog


def log() -> structlog.typing.FilteringBoundLogger:
    import structlog

    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("ttsyncd.control")
    return logger


Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 1 << 20


@dataclass
class Stream:
    """A handler's answer that keeps the connection open: `first` is the request's answer,
    then each of `events` goes out as a line of its own; `end` runs once the stream is over
    (the events ended, the peer hung up)."""

    first: Any
    events: AsyncIterator[dict[str, Any]]
    end: Callable[[], None]


def socket_path(town_dir: Path) -> Path:
    return town_dir / ".tt" / "ttsyncd.sock"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class DaemonAlreadyRunning(TtsyncdError):
    pass


async def serve(path: Path, handle: Handler) -> asyncio.Server:
    """Listen on `path` (0600). Refuses when another daemon answers there; a stale socket
    file (nobody listening) is replaced."""
    import asyncio

    if path.exists():
        if request(path, {"cmd": "status"}, timeout=2.0) is not None:
            raise DaemonAlreadyRunning(f"a ttsyncd daemon already serves this town ({path})")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if peer_uid(writer.get_extra_info("socket")) != os.getuid():
                log().warning("control socket: refused a peer of another uid")
                await reply(writer, {"ok": False, "error": "permission denied: not your daemon"})
                return
            while line := await reader.readline():
                answered = await answer(line, handle)
                if isinstance(stream := answered.get("result"), Stream):
                    await send_stream(reader, writer, stream)
                    return
                await reply(writer, answered)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        server = await asyncio.start_unix_server(on_connect, path, limit=MAX_REQUEST)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


async def answer(line: bytes, handle: Handler) -> dict[str, Any]:
    try:
        message = json.loads(line)
        if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
            raise ValueError('a request is a JSON object with a "cmd" string')
        return {"ok": True, "result": await handle(message)}
    except TtsyncdError as error:  # the CLI exits with the code it would have had itself
        return {"ok": False, "error": str(error), "code": error.exit_code}
    except ValueError as error:
        return {"ok": False, "error": str(error)}
    except Exception as error:  # the daemon keeps serving; the caller learns what failed
        log().exception("control request failed")
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


async def send_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: Stream
) -> None:
    """Answer, then send events until they end or the peer hangs up (it sends nothing more:
    end of file). A peer that reads slowly only slows this connection: its queue of events,
    not the daemon, takes the wait."""
    import asyncio

    async def pump() -> None:
        async for event in stream.events:
            await reply(writer, event)

    try:
        await reply(writer, {"ok": True, "result": stream.first})
        pumping = asyncio.ensure_future(pump())
        hangup = asyncio.ensure_future(reader.read())
        try:
            await asyncio.wait({pumping, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, hangup):
                task.cancel()
            await asyncio.gather(pumping, hangup, return_exceptions=True)
    finally:
        stream.end()


async def reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")
    await writer.drain()


def request(path: Path, message: dict[str, Any], timeout: float = 600.0) -> dict[str, Any] | None:
    """Send one request; the answer, or None when no daemon listens at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        with contextlib.suppress(BrokenPipeError):
            # A daemon refusing a peer of another uid answers and closes before reading
            # the request: its answer is still there to read.
            sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as stream:
            line = stream.readline(MAX_REQUEST * 64)
    if not line:
        return None
    answer: dict[str, Any] = json.loads(line)
    return answer
