"""`ttsyncd service install|uninstall|status`: the town's daemon as a systemd service.

install writes the template unit `ttsyncd@.service` (shipped in this package; ExecStart set to
the ttsyncd that runs the command) into the user's or the system's unit directory, and for a
system unit a drop-in running it as the town's owner; then `systemctl daemon-reload` and
`enable --now` of the town's instance, `ttsyncd@<town path, systemd-escaped>.service`.
`--dry-run` prints the files and the commands instead. systemctl is whatever `systemctl` is
first on PATH.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ttsyncd.errors import EXIT_OK, EXIT_PLAN, ConfigError, TtsyncdError

TEMPLATE = "ttsyncd@.service"
SHIPPED_EXEC_START = "ExecStart=/usr/local/bin/ttsyncd --town %f run"
INSTALLED_HEADER = "# Written by `ttsyncd service install`; `ttsyncd service uninstall` removes it."
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
DROP_IN = "10-owner.conf"  # a system unit's User=/Group=, in ttsyncd@<instance>.service.d/


@dataclass(frozen=True)
class Service:
    """The town's service: where its files go and how systemctl is told."""

    town_dir: Path
    system: bool
    unit_dir: Path

    @property
    def instance(self) -> str:
        return f"ttsyncd@{escape_path(self.town_dir)}.service"

    @property
    def template_path(self) -> Path:
        return self.unit_dir / TEMPLATE

    @property
    def drop_in_path(self) -> Path:
        return self.unit_dir / f"{self.instance}.d" / DROP_IN

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.system else ["--user"]), *args]


def service_for(town_dir: Path, *, system: bool, unit_dir: str | None) -> Service:
    if unit_dir is not None:
        directory = Path(unit_dir).absolute()
    elif system:
        directory = SYSTEM_UNIT_DIR
    else:
        config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        directory = Path(config_home) / "systemd" / "user"
    return Service(town_dir, system, directory)


def escape_path(path: Path) -> str:
    """`systemd-escape --path`: the path without its outer slashes, `/` as `-`, and every byte
    but ASCII letters, digits, `:`, `_` and a `.` not in first place as `\\xNN`."""
    text = "/".join(part for part in str(path).split("/") if part and part != ".")
    if not text:
        return "-"
    escaped = []
    for index, char in enumerate(text):
        if char == "/":
            escaped.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_")) or (char == "." and index):
            escaped.append(char)
        else:
            escaped.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(escaped)


def exec_command() -> list[str]:
    """The ttsyncd that runs now, as ExecStart should start it: its script (this one, or the
    one beside this Python), else `python -m ttsyncd` with this Python."""
    invoked = Path(sys.argv[0])
    if invoked.name == "ttsyncd" and invoked.is_file():
        return [str(invoked.absolute())]
    beside = Path(sys.executable).parent / "ttsyncd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [str(Path(sys.executable).absolute()), "-m", "ttsyncd"]


def exec_quote(word: str) -> str:
    """One word of an ExecStart= line: `%` doubled (a specifier otherwise), quoted when it
    holds a space or a quote."""
    word = word.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def unit_text() -> str:
    """The shipped template with ExecStart running this ttsyncd."""
    template = resources.files("ttsyncd").joinpath(TEMPLATE).read_text(encoding="utf-8")
    if SHIPPED_EXEC_START not in template:
        raise TtsyncdError(f"the shipped {TEMPLATE} has no line {SHIPPED_EXEC_START!r}")
    command = " ".join(exec_quote(word) for word in exec_command())
    installed = template.replace(SHIPPED_EXEC_START, f"ExecStart={command} --town %f run")
    return f"{INSTALLED_HEADER}\n{installed}"


def drop_in_text(town_dir: Path) -> str:
    """A system unit runs as the town's owner (the files it writes stay theirs)."""
    info = town_dir.stat()
    user = pwd.getpwuid(info.st_uid).pw_name
    group = grp.getgrgid(info.st_gid).gr_name
    return (
        f"# Written by `ttsyncd service install --system`: the daemon runs as the owner of\n"
        f"# {town_dir}.\n[Service]\nUser={user}\nGroup={group}\n"
    )


def install(service: Service, *, dry_run: bool) -> int:
    files = {service.template_path: unit_text()}
    if service.system:
        files[service.drop_in_path] = drop_in_text(service.town_dir)
    commands = [
        service.systemctl("daemon-reload"),
        service.systemctl("enable", "--now", service.instance),
    ]
    if dry_run:
        for path, text in files.items():
            print(f"would write {path}:")
            print(text, end="" if text.endswith("\n") else "\n")
        for command in commands:
            print(f"would run: {shlex.join(command)}")
        return EXIT_OK
    systemctl = find_systemctl()
    for path, text in files.items():
        write_file(path, text)
        print(f"wrote {path}")
    for command in commands:
        run(systemctl, command)
    print(f"{service.instance} enabled and started; `ttsyncd service status` shows it")
    return EXIT_OK


def uninstall(service: Service, *, dry_run: bool) -> int:
    """Disable and stop the town's instance, remove its drop-in, and the template too when no
    other town's instance is enabled from this unit directory."""
    others = [
        link
        for link in service.unit_dir.glob("*.wants/ttsyncd@*.service")
        if link.name != service.instance
    ]
    removing = [service.drop_in_path] if service.system else []
    if not others:
        removing.append(service.template_path)
    disable = service.systemctl("disable", "--now", service.instance)
    reload = service.systemctl("daemon-reload")
    if dry_run:
        print(f"would run: {shlex.join(disable)}")
        for path in removing:
            print(f"would remove {path}")
        print(f"would run: {shlex.join(reload)}")
        return EXIT_OK
    systemctl = find_systemctl()
    run(systemctl, disable)
    for path in removing:
        if path.exists():
            path.unlink()
            print(f"removed {path}")
    if service.system:
        with_drop_ins = service.drop_in_path.parent
        if with_drop_ins.is_dir() and not any(with_drop_ins.iterdir()):
            with_drop_ins.rmdir()
    run(systemctl, reload)
    print(f"{service.instance} disabled and stopped")
    return EXIT_OK


def status(service: Service) -> int:
    """Where the unit is, and what systemctl says of the instance; exits 0 when it is active."""
    installed = "installed" if service.template_path.exists() else "not installed"
    print(f"unit:     {service.template_path} ({installed})")
    print(f"instance: {service.instance}")
    systemctl = find_systemctl()
    command = service.systemctl("status", "--no-pager", service.instance)
    done = subprocess.run([systemctl, *command[1:]], check=False)
    return EXIT_OK if done.returncode == 0 else EXIT_PLAN


def find_systemctl() -> str:
    found = shutil.which("systemctl")
    if found is None:
        raise ConfigError(
            "systemctl not found: is this a systemd system? (--dry-run shows the unit and the "
            "commands)"
        )
    return found


def run(systemctl: str, command: list[str]) -> None:
    done = subprocess.run([systemctl, *command[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()
        raise TtsyncdError(
            f"`{shlex.join(command)}` failed (exit {done.returncode})" + (f": {why}" if why else "")
        )


def write_file(path: Path, text: str) -> None:
    """Replace `path` by `text` (0644) atomically: systemd never reads half a unit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
