"""Which Redis a town uses, by precedence: --redis-url, REDIS_URL, the config's [redis] (a URL
or sentinels), tinytown.toml's [redis], else the embedded server on tinytown's socket. Also
the one other thing ttsyncd reads from tinytown.toml: the town's name.

Pure, like config.py (which calls it): nothing here connects; endpoints.py says what an
endpoint is and opens its clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from ttsyncd.endpoints import SENTINEL_PORT, TLS_FILES, Endpoint, endpoint_from_url, parse_host_port
from ttsyncd.errors import ConfigError

TINYTOWN_FILE: Final = "tinytown.toml"
DEFAULT_SOCKET: Final = ".tt/redis.sock"  # tinytown's own default, relative to the town

# The [redis] keys of tinytown 0.10 that ttsyncd uses; tinytown has more (persist, bind, ...),
# which are its business and are ignored here.
_TINYTOWN_REDIS_TYPES: Final[dict[str, type]] = {
    "url": str,
    "use_socket": bool,
    "socket_path": str,
    "host": str,
    "port": int,
    "password": str,
    "tls_enabled": bool,
    "tls_ca_cert": str,
}


def tinytown_name(tinytown: dict[str, Any] | None, path: Path) -> str | None:
    if tinytown is None or "name" not in tinytown:
        return None
    name = tinytown["name"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: name must be a non-empty string")
    return name


def _redis_table(tinytown: dict[str, Any], path: Path) -> dict[str, Any]:
    table = tinytown["redis"]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: redis must be a table [redis]")
    for key, expected in _TINYTOWN_REDIS_TYPES.items():
        value = table.get(key)
        # bool is an int in Python, so compare exact types; values are never echoed (password).
        if value is not None and type(value) is not expected:
            raise ConfigError(f"{path}: redis.{key} must be a {expected.__name__}")
    port = table.get("port", 6379)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: redis.port must be between 1 and 65535")
    return table


def choose_endpoint(  # noqa: PLR0913 — keyword-only, one per source in the precedence order
    *,
    redis_url_arg: str | None,
    env: Mapping[str, str],
    config_url: str | None,
    config_path: Path | None,
    tinytown: dict[str, Any] | None,
    town_dir: Path,
    config_redis: Mapping[str, Any] | None = None,
) -> Endpoint:
    """--redis-url, REDIS_URL, the config's [redis] url or sentinels, tinytown.toml's [redis],
    else embedded. The config's `cluster` applies to the config's own endpoint."""
    if redis_url_arg is not None:
        return endpoint_from_url(redis_url_arg, "--redis-url")
    if env.get("REDIS_URL"):
        return endpoint_from_url(env["REDIS_URL"], "REDIS_URL")
    config_redis = config_redis or {}
    if config_url is not None:
        endpoint = endpoint_from_url(config_url, f"config {config_path}")
        return replace(endpoint, cluster=config_redis.get("cluster"))
    if config_redis.get("sentinels"):
        return sentinel_endpoint_from_config(config_redis, f"config {config_path}")
    if tinytown is not None and "redis" in tinytown:
        table = _redis_table(tinytown, town_dir / TINYTOWN_FILE)
        return _tinytown_endpoint(table, env, town_dir)
    return Endpoint(
        source="embedded default",
        unix_socket=(town_dir / DEFAULT_SOCKET).resolve(),
        managed=True,
    )


def sentinel_endpoint_from_config(table: Mapping[str, Any], source: str) -> Endpoint:
    """[redis] sentinels = ["host:port", ...] with service_name (checked by _check_topology)."""

    def invalid(reason: str) -> ConfigError:
        return ConfigError(f"{source}: redis.sentinels: {reason}")

    return Endpoint(
        source=source,
        db=table.get("db", 0),
        username=table.get("username"),
        password=table.get("password"),
        sentinels=tuple(parse_host_port(h, SENTINEL_PORT, invalid) for h in table["sentinels"]),
        service_name=table["service_name"],
        sentinel_password=table.get("sentinel_password"),
        tls=table.get("tls", False),
    )


def _tinytown_endpoint(table: dict[str, Any], env: Mapping[str, str], town_dir: Path) -> Endpoint:
    source = TINYTOWN_FILE
    if table.get("url"):
        return endpoint_from_url(table["url"], source)
    if table.get("use_socket", True):
        # tinytown starts its own redis-server on this socket (without a password: it never
        # sends one over the socket), so ttsyncd may start it too.
        socket_path = (town_dir / table.get("socket_path", DEFAULT_SOCKET)).resolve()
        return Endpoint(source=source, unix_socket=socket_path, managed=True)
    ca_cert = table.get("tls_ca_cert")
    return Endpoint(
        source=source,
        host=table.get("host", "127.0.0.1"),
        port=table.get("port", 6379),
        password=env.get("TINYTOWN_REDIS_PASSWORD") or table.get("password") or None,
        tls=table.get("tls_enabled", False),
        tls_ca_cert=(town_dir / ca_cert).resolve() if ca_cert else None,
    )


def with_tls_settings(
    endpoint: Endpoint, redis_section: dict[str, Any], config_path: Path | None, town_dir: Path
) -> Endpoint:
    """The config's [redis] TLS keys applied to the chosen endpoint when it uses TLS (rediss://,
    tinytown's tls_enabled), whichever source named it; a plain or unix endpoint ignores them.

    Each file must exist: a missing one would otherwise surface as "cannot reach Redis"."""
    files: dict[str, Path] = {}
    for key in TLS_FILES:
        if key in redis_section:
            path = town_dir / redis_section[key]  # an absolute path stays as it is
            if not path.is_file():
                raise ConfigError(f"{config_path}: redis.{key}: {path} is not a file")
            files[key] = path.resolve()
    if "tls_client_key" in files and "tls_client_cert" not in files:
        raise ConfigError(
            f"{config_path}: redis.tls_client_key needs redis.tls_client_cert (the certificate "
            "it belongs to; a file holding both can be named as tls_client_cert alone)"
        )
    if not endpoint.tls or not (files or "tls_verify" in redis_section):
        return endpoint
    return replace(
        endpoint,
        tls_ca_cert=files.get("tls_ca_cert", endpoint.tls_ca_cert),
        tls_client_cert=files.get("tls_client_cert"),
        tls_client_key=files.get("tls_client_key"),
        tls_verify=redis_section.get("tls_verify"),
    )
