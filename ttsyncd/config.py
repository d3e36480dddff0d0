"""Settings: the town, its Redis and the sync knobs, from flags, env, ttsyncd.toml, tinytown.toml.

Settings are a pure function of (arguments, environment, files on disk): nothing here connects
to Redis. Which Redis, by precedence, is redis_choice.py's answer; what an endpoint is, its URL
forms and its clients are in endpoints.py. Passwords never reach an error message, a repr
or a log line: errors about URLs name where the URL came from, never its text.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from ttsyncd.endpoints import TLS_FILES, TLS_VERIFY_MODES, Endpoint
from ttsyncd.errors import ConfigError
from ttsyncd.redis_choice import TINYTOWN_FILE, choose_endpoint, tinytown_name, with_tls_settings

POLICIES: Final = ("owner", "file", "redis", "manual")
DELETION_MODES: Final = ("delete", "cancel", "keep")
# What a stale write (one made from a copy older than the other side's change it undoes) gets:
# set aside and recorded (keep-newer), or applied like any other change (apply).
STALE_WRITE_MODES: Final = ("keep-newer", "apply")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("auto", "console", "json")

CONFIG_FILE: Final = "ttsyncd.toml"
TASKS_FILE: Final = "tasks.toml"


@dataclass(frozen=True)
class SyncSettings:
    policy: str = "owner"
    deletions: str = "delete"
    max_delete_fraction: float = 0.5
    max_delete_min: int = 5
    file_debounce_ms: int = 100
    file_max_wait_ms: int = 1000
    redis_debounce_ms: int = 50
    redis_max_wait_ms: int = 500
    poll_interval_ms: int = 2000
    stale_writes: str = "keep-newer"
    verify_interval_s: float = 60.0


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto|console|json


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: `listen` ("host:port"): serve Prometheus metrics there (the `metrics` extra);
    None: no metrics, and prometheus_client is never imported."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class Settings:
    town_dir: Path
    town_name: str
    tasks_file: Path
    config_path: Path | None
    state_dir: Path
    endpoint: Endpoint
    sync: SyncSettings
    log: LogSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


# --- town discovery -------------------------------------------------------------------------


def find_town(town_arg: str | None, env: Mapping[str, str], cwd: Path) -> Path:
    """--town, else $TTSYNCD_TOWN, else the nearest directory from cwd up holding a town file.
    Never cwd by default: a command run outside a town must not make one there (`.tt/`, a
    redis-server)."""
    for explicit, origin in ((town_arg, "--town"), (env.get("TTSYNCD_TOWN"), "TTSYNCD_TOWN")):
        if explicit:
            town_dir = (cwd / explicit).resolve()
            if not town_dir.is_dir():
                raise ConfigError(f"{origin}: {town_dir} is not a directory")
            return town_dir
    start = cwd.resolve()
    for candidate in (start, *start.parents):
        if (candidate / TINYTOWN_FILE).is_file() or (candidate / TASKS_FILE).is_file():
            return candidate
    raise ConfigError(
        f"no town found: no {TINYTOWN_FILE} or {TASKS_FILE} in {start} or any directory above "
        "it; run ttsyncd inside a town, or name one with --town DIR"
    )


# --- settings ---------------------------------------------------------------------------------


def load_settings(
    *,
    town_arg: str | None,
    config_arg: str | None,
    redis_url_arg: str | None,
    env: Mapping[str, str],
    cwd: Path,
) -> Settings:
    town_dir = find_town(town_arg, env, cwd)
    config_path = _config_path(config_arg, env, cwd, town_dir)
    config = _read_config(config_path) if config_path else {}
    tinytown_path = town_dir / TINYTOWN_FILE
    tinytown = _read_toml(tinytown_path) if tinytown_path.is_file() else None

    town_section = config.get("town", {})
    # tinytown's name keys the Redis keyspace (tt:<town>:...), so it beats ours.
    town_name = tinytown_name(tinytown, tinytown_path) or town_section.get("name") or town_dir.name
    return Settings(
        town_dir=town_dir,
        town_name=town_name,
        tasks_file=town_dir / town_section.get("tasks_file", TASKS_FILE),
        config_path=config_path,
        state_dir=town_dir / ".tt" / "ttsyncd",
        endpoint=with_tls_settings(
            choose_endpoint(
                redis_url_arg=redis_url_arg,
                env=env,
                config_url=config.get("redis", {}).get("url"),
                config_path=config_path,
                config_redis=config.get("redis", {}),
                tinytown=tinytown,
                town_dir=town_dir,
            ),
            config.get("redis", {}),
            config_path,
            town_dir,
        ),
        sync=SyncSettings(**config.get("sync", {})),
        log=LogSettings(**config.get("log", {})),
        metrics=MetricsSettings(**config.get("metrics", {})),
    )


def _config_path(
    config_arg: str | None, env: Mapping[str, str], cwd: Path, town_dir: Path
) -> Path | None:
    for explicit, origin in (
        (config_arg, "--config"),
        (env.get("TTSYNCD_CONFIG"), "TTSYNCD_CONFIG"),
    ):
        if explicit:
            path = (cwd / explicit).resolve()
            if not path.is_file():
                raise ConfigError(f"{origin}: config file {path} does not exist or is not a file")
            return path
    in_town = town_dir / CONFIG_FILE
    return in_town if in_town.is_file() else None


# --- the ttsyncd config file ------------------------------------------------------------------


class _BadValue(Exception):
    """A value that fails its check; the caller adds file and key."""


Check = Callable[[object], Any]


def _string(value: object) -> str:
    # Never shows the value: [redis] url is a string and may hold a password.
    if not isinstance(value, str) or not value:
        raise _BadValue("must be a non-empty string")
    return value


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise _BadValue(f"must be one of {', '.join(choices)} (got {value!r})")
        return value.lower()

    return check


def _int_at_least(minimum: int) -> Check:
    def check(value: object) -> int:
        # bool is an int in Python; `true` is no count of milliseconds.
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise _BadValue(f"must be an integer >= {minimum} (got {value!r})")
        return value

    return check


def _seconds(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise _BadValue(f"must be a number of seconds above 0 (got {value!r})")
    return float(value)


def _fraction(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise _BadValue(f"must be a number between 0 and 1 (got {value!r})")
    return float(value)


def _listen_address(value: object) -> tuple[str, int]:
    """Where metrics are served: "host:port" (an IPv6 host in brackets), the port 1-65535."""
    wanted = '"host:port", such as "127.0.0.1:9464" (an IPv6 host in brackets)'
    if not isinstance(value, str):
        raise _BadValue(f"must be {wanted} (got {value!r})")
    try:
        parts = urlsplit(f"//{value.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port or parts.username is not None or parts.path or parts.query:
        raise _BadValue(f"must be {wanted}, the port 1-65535 (got {value!r})")
    return host, port


_CONFIG_SCHEMA: Final[dict[str, dict[str, Check]]] = {
    "town": {"name": _string, "tasks_file": _string},
    "redis": {
        "url": _string,
        **{key: _string for key in TLS_FILES},
        "tls_verify": _one_of(TLS_VERIFY_MODES),
    },
    "sync": {
        "policy": _one_of(POLICIES),
        "deletions": _one_of(DELETION_MODES),
        "max_delete_fraction": _fraction,
        "max_delete_min": _int_at_least(0),
        "file_debounce_ms": _int_at_least(0),
        "file_max_wait_ms": _int_at_least(0),
        "redis_debounce_ms": _int_at_least(0),
        "redis_max_wait_ms": _int_at_least(0),
        "poll_interval_ms": _int_at_least(1),  # 0 would poll in a busy loop
        "stale_writes": _one_of(STALE_WRITE_MODES),
        "verify_interval_s": _seconds,
    },
    "log": {"level": _one_of(LOG_LEVELS), "format": _one_of(LOG_FORMATS)},
    "metrics": {"listen": _listen_address},
}


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _BadValue(f"must be true or false (got {value!r})")
    return value


def _addresses(value: object) -> list[str]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise _BadValue('must be a non-empty list of "host:port" strings')
    return list(value)


# The topology keys of [redis]: Sentinel (the sentinels, the service, and the primary's
# credentials and db, which a URL would otherwise carry) and Cluster.
_TOPOLOGY_KEYS: Final[dict[str, Check]] = {
    "sentinels": _addresses,
    "service_name": _string,
    "sentinel_password": _string,
    "username": _string,
    "password": _string,
    "db": _int_at_least(0),
    "cluster": _bool,
    "tls": _bool,  # with sentinels: TLS to them and to the primary (a URL says rediss://)
}
_SENTINEL_ONLY: Final = ("service_name", "sentinel_password", "username", "password", "db", "tls")
_CONFIG_SCHEMA["redis"].update(_TOPOLOGY_KEYS)


def _check_topology(redis_table: dict[str, Any], path: Path) -> None:
    if "sentinels" in redis_table:
        if "url" in redis_table:
            raise ConfigError(f"{path}: redis.url and redis.sentinels are two endpoints: keep one")
        if "service_name" not in redis_table:
            raise ConfigError(f"{path}: redis.sentinels needs redis.service_name")
        if redis_table.get("cluster"):
            raise ConfigError(f"{path}: redis.cluster cannot go with redis.sentinels")
        return
    for key in _SENTINEL_ONLY:
        if key in redis_table:
            raise ConfigError(
                f"{path}: redis.{key} goes with redis.sentinels only "
                "(the credentials of a redis:// endpoint go in its url, and TLS is rediss://)"
            )


def _read_config(path: Path) -> dict[str, dict[str, Any]]:
    """The config file's sections, every key checked against the schema."""
    document = _read_toml(path)
    sections: dict[str, dict[str, Any]] = {}
    for section_name, section in document.items():
        schema = _CONFIG_SCHEMA.get(section_name)
        if schema is None:
            known = ", ".join(f"[{name}]" for name in _CONFIG_SCHEMA)
            raise ConfigError(f"{path}: unknown section or key {section_name!r} (known: {known})")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {section_name} must be a table [{section_name}]")
        sections[section_name] = {}
        for key, value in section.items():
            check = schema.get(key)
            if check is None:
                raise ConfigError(
                    f"{path}: unknown key {section_name}.{key} (known: {', '.join(schema)})"
                )
            try:
                sections[section_name][key] = check(value)
            except _BadValue as error:
                raise ConfigError(f"{path}: {section_name}.{key} {error}") from None
    _check_waits(sections.get("sync", {}), path)
    _check_topology(sections.get("redis", {}), path)
    return sections


def _check_waits(sync: dict[str, Any], path: Path) -> None:
    """A debounce's maximum wait below its quiet period would never let it settle."""
    defaults = SyncSettings()
    for side in ("file", "redis"):
        debounce = sync.get(f"{side}_debounce_ms", getattr(defaults, f"{side}_debounce_ms"))
        max_wait = sync.get(f"{side}_max_wait_ms", getattr(defaults, f"{side}_max_wait_ms"))
        if max_wait < debounce:
            raise ConfigError(
                f"{path}: sync.{side}_max_wait_ms ({max_wait}) must be >= "
                f"sync.{side}_debounce_ms ({debounce})"
            )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        # tomllib's messages name the line and column, never the text found there.
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
