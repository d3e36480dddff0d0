"""`ttsyncd start` / `stop`: the daemon in the background, with python-daemon.

`start` forks; the child becomes a proper daemon (python-daemon's DaemonContext: detached,
pidfile `<town>/.tt/ttsyncd.pid`, output to `<town>/.tt/ttsyncd.log`) and reports through a
pipe once its first sync is done and its control socket answers, or why it failed. So `start`
returns only when the daemon works, and exits non-zero with the reason when it does not.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import daemon
import daemon.pidfile

from ttsyncd import control, log
from ttsyncd.config import Settings
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, TtsyncdError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def pid_path(settings: Settings) -> Path:
    return settings.town_dir / ".tt" / "ttsyncd.pid"


def log_path(settings: Settings) -> Path:
    return settings.town_dir / ".tt" / "ttsyncd.log"


def pause_marker(settings: Settings) -> Path:
    """Present while the town is paused (`ttsyncd pause`); it holds the ISO time it began. A
    daemon (re)started while it exists, by systemd in the middle of a checkout, starts paused."""
    return settings.state_dir / "paused"


def paused_since(settings: Settings) -> str | None:
    marker = pause_marker(settings)
    try:
        since = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError:
        since = ""
    if not since:  # written by hand (`touch`): when it was made
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(marker.stat().st_mtime, UTC).isoformat(timespec="seconds")
        return "an unknown time"
    return since


def mark_paused(settings: Settings) -> str:
    """Pause the town (if it is not already); when the pause began."""
    since = paused_since(settings)
    if since is None:
        since = datetime.now(UTC).isoformat(timespec="seconds")
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pause_marker(settings).write_text(since + "\n", encoding="utf-8")
    return since


def clear_pause(settings: Settings) -> str | None:
    """Unpause the town; when the pause had begun, None if it was not paused."""
    since = paused_since(settings)
    pause_marker(settings).unlink(missing_ok=True)
    return since


def running_pid(settings: Settings) -> int | None:
    """The pid in the pidfile if that process is alive; a stale pidfile is removed."""
    path = pid_path(settings)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)  # stale: its daemon died without cleaning up
        return None
    except PermissionError:
        pass  # alive, someone else's
    return pid


def start(settings: Settings, reload_settings: Callable[[], Settings]) -> int:
    sock = control.socket_path(settings.town_dir)
    answer = control.request(sock, {"cmd": "status"}, timeout=5.0)
    if answer is not None:
        pid = answer.get("result", {}).get("pid")
        print(
            f"ttsyncd: already running for {settings.town_dir} (pid {pid}); not starting another",
            file=sys.stderr,
        )
        return EXIT_PLAN
    pid = running_pid(settings)
    if pid is not None:
        print(f"ttsyncd: pid {pid} holds {pid_path(settings)} but does not answer on {sock}; "
              "stop it, or remove the pidfile if it is not ttsyncd", file=sys.stderr)  # fmt: skip
        return EXIT_PLAN
    pid_path(settings).parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child, checked end to end
        os.close(read_end)
        os._exit(become_daemon(settings, reload_settings, write_end))
    os.close(write_end)
    os.waitpid(child, 0)  # the intermediate process exits as soon as the daemon detaches
    report = read_report(read_end, START_TIMEOUT_S)
    if report.startswith("ready"):
        print(f"ttsyncd started for {settings.town_dir} (pid {report.split()[1]}); "
              f"log: {log_path(settings)}")  # fmt: skip
        return EXIT_OK
    print(f"ttsyncd: the daemon did not come up: {report or 'no answer'}; "
          f"see {log_path(settings)}", file=sys.stderr)  # fmt: skip
    return EXIT_PLAN


def read_report(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with os.fdopen(fd, "rb", buffering=0) as stream:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([stream], [], [], left)
            if not ready:
                break
            chunk = stream.read(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


def become_daemon(
    settings: Settings, reload_settings: Callable[[], Settings], report_fd: int
) -> int:  # pragma: no cover - runs in the forked child
    from ttsyncd.daemon import run_foreground

    log_file = open(log_path(settings), "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    context = daemon.DaemonContext(
        working_directory=str(settings.town_dir),
        umask=0o022,
        pidfile=daemon.pidfile.TimeoutPIDLockFile(str(pid_path(settings)), acquire_timeout=0),
        files_preserve=[report_fd, log_file],
        stdout=log_file,
        stderr=log_file,
        signal_map={},  # the daemon's asyncio loop handles its signals
    )

    def report(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(report_fd, text.encode())
            os.close(report_fd)

    try:
        with context:
            log.configure(settings.log.level, "json" if settings.log.format == "auto"
                          else settings.log.format, log_file)  # fmt: skip
            return run_foreground(
                settings, reload_settings, "background",
                on_ready=lambda: report(f"ready {os.getpid()}\n"),
            )  # fmt: skip
    except TtsyncdError as error:
        report(f"{error}\n")
        return error.exit_code
    except BaseException as error:
        traceback.print_exc(file=log_file)
        report(f"{type(error).__name__}: {error}\n")
        return 1


def stop(settings: Settings) -> int:
    """Ask the daemon to stop through its socket (else SIGTERM the pidfile's pid), and wait."""
    sock = control.socket_path(settings.town_dir)
    answer = control.request(sock, {"cmd": "stop"}, timeout=5.0)
    pid = answer.get("result", {}).get("pid") if answer and answer.get("ok") else None
    if pid is None:
        pid = running_pid(settings)
        if pid is None:
            print(f"ttsyncd is not running for {settings.town_dir}")
            return EXIT_OK
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"ttsyncd stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.05)
    print(f"ttsyncd: pid {pid} did not exit within {STOP_TIMEOUT_S:.0f} s", file=sys.stderr)
    return EXIT_PLAN
