"""Where a town's Redis is: `Endpoint` (one server, Sentinel or Cluster; TLS; credentials) and
its client factories, and the Redis URL forms (redis://, rediss://, unix://, redis+sentinel://,
rediss+sentinel://).

Nothing here connects by itself: the client factories (`client`, `async_client`, their
Sentinel and Cluster forms) build redis-py clients, which connect on their first command (a
Cluster client as it is built, to learn the slots); `topology.open_client` and
`connection.connect` choose and use them. Passwords never reach an error message, a repr or a
log line: errors about URLs name where the URL came from, never its text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ttsyncd.errors import ConfigError

if TYPE_CHECKING:  # redis-py is imported when a client is made: `status` needs none (fast start)
    import redis
    import redis.asyncio
    import redis.cluster

URL_SCHEMES: Final = ("redis", "rediss", "unix")
# redis-py's own ssl_cert_reqs values. In client mode Python's ssl treats "optional" as
# "required": the server's certificate is checked either way; only "none" skips the check.
TLS_VERIFY_MODES: Final = ("required", "optional", "none")
# The [redis] keys naming a file for TLS: the CA to check the server with, the client's own
# certificate and key (for a server with `tls-auth-clients yes`).
TLS_FILES: Final = ("tls_ca_cert", "tls_client_cert", "tls_client_key")
MASK: Final = "***"
SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_TLS_SCHEME: Final = "rediss+sentinel"  # TLS to the sentinels and to the primary
SENTINEL_PORT: Final = 26379  # Sentinel's own default port


@dataclass(frozen=True)
class Endpoint:
    """One Redis server and db. `url` and `password` hold secrets, so repr() leaves them out."""

    source: str
    url: str | None = field(default=None, repr=False)
    unix_socket: Path | None = None
    host: str = ""  # TCP only ("" for a unix socket)
    port: int = 0  # TCP only (0 for a unix socket)
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_cert: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    tls_verify: str | None = None  # one of TLS_VERIFY_MODES; None: redis-py's default, required
    managed: bool = False
    # Sentinel: the sentinels' (host, port) and the primary's service name; the fields above
    # (db, username, password) are then the primary's, and TLS (with its files) is used both
    # with the sentinels and with the primary. `sentinel_password` is the sentinels' own
    # (`requirepass` in sentinel.conf), if they have one.
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    # Redis Cluster: True forces it, False rules it out, None detects it (INFO cluster).
    cluster: bool | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def redacted(self) -> str:
        """A URL for humans and logs, rebuilt from the fields so no secret can slip through."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            userinfo = f"{user}:{MASK}@" if self.password is not None else f"{user}@"
        if self.is_sentinel:
            hosts = ",".join(f"{_url_host(host)}:{port}" for host, port in self.sentinels)
            scheme = SENTINEL_TLS_SCHEME if self.tls else SENTINEL_SCHEME
            return f"{scheme}://{userinfo}{hosts}/{self.service_name}/{self.db}"
        if self.unix_socket is not None:
            db_query = f"?db={self.db}" if self.db else ""
            return f"unix://{userinfo}{self.unix_socket}{db_query}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{userinfo}{_url_host(self.host)}:{self.port}/{self.db}"

    def identity(self) -> str:
        """Server and db, without credentials: the key of state persisted per Redis."""
        if self.is_sentinel:
            # The service, not its current primary: a failover keeps the data (and the base).
            hosts = ",".join(sorted(f"{_url_host(host)}:{port}" for host, port in self.sentinels))
            return f"sentinel:{hosts}/{self.service_name}/{self.db}"
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}/{self.db}"
        return f"tcp:{_url_host(self.host)}:{self.port}/{self.db}"

    def client(self, *, decode_responses: bool = True, timeout_s: float = 5.0) -> redis.Redis:
        """A client of the server (behind Sentinel: of the current primary; see cluster_client
        for a Redis Cluster)."""
        import redis

        url, options = self.connection_options(decode_responses, timeout_s)
        if self.is_sentinel:
            return self.sentinel_client(options)
        if url is not None:
            return redis.Redis.from_url(url, **options)
        return redis.Redis(**options)

    def async_client(self, *, timeout_s: float = 5.0) -> redis.asyncio.Redis:
        """The same connection for asyncio (keyspace notifications)."""
        import redis.asyncio

        url, options = self.async_options(timeout_s)
        if self.is_sentinel:
            return self.async_sentinel_client(options)
        if url is not None:
            return redis.asyncio.Redis.from_url(url, **options)
        return redis.asyncio.Redis(**options)

    def async_options(self, timeout_s: float) -> tuple[str | None, dict[str, Any]]:
        import redis.asyncio.retry
        from redis.backoff import NoBackoff

        url, options = self.connection_options(True, timeout_s)
        options["socket_timeout"] = None  # a subscriber waits for messages as long as it takes
        # No retries: the daemon reconnects, resubscribes and resyncs itself.
        options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), retries=0)
        return url, options

    # Sentinel and Cluster: redis-py's own clients, which find the primary (and follow it
    # after a failover) or route each key to its node (MOVED/ASK, resharding) themselves.

    # (redis.sentinel has no type hints.)
    def sentinel_client(self, options: dict[str, Any]) -> redis.Redis:
        import redis.sentinel

        sentinel_options, primary_options = self.sentinel_options(options)
        sentinel = redis.sentinel.Sentinel(list(self.sentinels), **sentinel_options)  # type: ignore[no-untyped-call]
        primary: redis.Redis = sentinel.master_for(str(self.service_name), **primary_options)  # type: ignore[no-untyped-call]
        return primary

    def async_sentinel_client(self, options: dict[str, Any]) -> redis.asyncio.Redis:
        import redis.asyncio.sentinel

        sentinel_options, primary_options = self.sentinel_options(options)
        sentinel = redis.asyncio.sentinel.Sentinel(list(self.sentinels), **sentinel_options)  # type: ignore[no-untyped-call]
        primary: redis.asyncio.Redis = sentinel.master_for(
            str(self.service_name), **primary_options
        )
        return primary

    def sentinel_options(self, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the sentinels' connection options, the primary's) from `connection_options`."""
        primary = {k: v for k, v in options.items() if k not in ("host", "port")}
        if not primary.get("ssl"):
            # Plain connections take no TLS options; the pool picks the TLS class on `ssl`.
            primary = {k: v for k, v in primary.items() if not k.startswith("ssl")}
        sentinel = {
            "socket_timeout": options.get("socket_timeout"),
            "socket_connect_timeout": options.get("socket_connect_timeout"),
            "retry": options.get("retry"),
            "password": self.sentinel_password,
            # TLS: the same CA, client certificate and verification as with the primary.
            **({"ssl": True, **self.tls_options()} if self.tls else {}),
        }
        return {"sentinel_kwargs": sentinel}, primary

    def cluster_client(
        self,
        *,
        decode_responses: bool = True,
        timeout_s: float = 5.0,
        nodes: Sequence[tuple[str, int]] = (),
    ) -> redis.cluster.RedisCluster:
        """A Redis Cluster client that starts from `nodes` (host, port), then this endpoint's
        node."""
        import redis.cluster

        url, options = self.connection_options(decode_responses, timeout_s)
        options.pop("db", None)  # a cluster has db 0 only; from_url checks the URL's
        if nodes:
            options["startup_nodes"] = [redis.cluster.ClusterNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]
        if url is not None:
            return redis.cluster.RedisCluster.from_url(url, **options)
        return redis.cluster.RedisCluster(**options)

    def async_cluster_client(
        self, *, timeout_s: float = 5.0, nodes: Sequence[tuple[str, int]] = ()
    ) -> redis.asyncio.RedisCluster:
        import redis.asyncio
        import redis.asyncio.cluster

        url, options = self.async_options(timeout_s)
        options.pop("db", None)
        if nodes:
            options["startup_nodes"] = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes]
        if url is not None:
            return redis.asyncio.RedisCluster.from_url(url, **options)
        return redis.asyncio.RedisCluster(**options)

    def connection_options(
        self, decode_responses: bool, timeout_s: float
    ) -> tuple[str | None, dict[str, Any]]:
        """(the URL or None, keyword arguments) for redis-py's Redis or redis.asyncio.Redis."""
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "decode_responses": decode_responses,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # redis-py 8 retries 10 times with backoff up to seconds, auth errors included:
            # answer a one-shot command quickly; the daemon does its own reconnecting.
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        }
        if self.url is not None:
            # from_url lets the URL's own query options (?ssl_cert_reqs=none, ...) win over these.
            return self.url, {**options, **self.tls_options()}
        options.update(db=self.db, username=self.username, password=self.password)
        if self.unix_socket is not None:
            return None, {**options, "unix_socket_path": str(self.unix_socket)}
        return None, {
            **options,
            "host": self.host,
            "port": self.port,
            "ssl": self.tls,
            **self.tls_options(),
        }

    def tls_options(self) -> dict[str, Any]:
        """redis-py's own ssl_* options for a TLS endpoint; nothing for a plain one."""
        if not self.tls:
            return {}
        files = {
            "ssl_ca_certs": self.tls_ca_cert,
            "ssl_certfile": self.tls_client_cert,
            "ssl_keyfile": self.tls_client_key,
        }
        options: dict[str, Any] = {name: str(path) for name, path in files.items() if path}
        if self.tls_verify is not None:
            options["ssl_cert_reqs"] = self.tls_verify
        return options


def endpoint_from_url(url: str, source: str) -> Endpoint:
    """An explicit redis:// rediss:// or unix:// URL. Errors name `source`, never the URL."""

    def invalid(reason: str) -> ConfigError:
        return ConfigError(f"{source}: invalid Redis URL: {reason}")

    if url.lower().startswith((f"{SENTINEL_SCHEME}://", f"{SENTINEL_TLS_SCHEME}://")):
        return sentinel_endpoint_from_url(url, source, invalid)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid(
            "cannot parse it (is the port a number? special characters in the "
            "password must be percent-encoded)"
        ) from None
    if parts.scheme not in URL_SCHEMES:
        raise invalid(
            "the scheme must be redis://, rediss://, unix://, redis+sentinel:// "
            "or rediss+sentinel://"
        )
    if parts.fragment:
        raise invalid("unexpected '#' (percent-encode it as %23 in a password)")
    query = parse_qs(parts.query)
    # As redis-py does: credentials in the authority win over ?username= / ?password=.
    username = _unquoted(parts.username) or _first(query, "username")
    password = _unquoted(parts.password) or _first(query, "password")
    db_text = _first(query, "db")

    if parts.scheme == "unix":
        if parts.hostname or port is not None or not parts.path.startswith("/"):
            raise invalid("a unix URL names an absolute socket path: unix:///path/to/redis.sock")
        return Endpoint(
            source=source,
            url=url,
            unix_socket=Path(unquote(parts.path)),
            db=_db_number(db_text, invalid),
            username=username,
            password=password,
        )

    path_db = unquote(parts.path).strip("/")
    if db_text is None and path_db:
        db_text = path_db
    return Endpoint(
        source=source,
        url=url,
        host=parts.hostname or "localhost",
        port=port or 6379,
        db=_db_number(db_text, invalid),
        username=username,
        password=password,
        tls=parts.scheme == "rediss",
    )


def sentinel_endpoint_from_url(
    url: str, source: str, invalid: Callable[[str], ConfigError]
) -> Endpoint:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`: the primary of
    `service`, found through these sentinels; the credentials and db are the primary's.
    `rediss+sentinel://…`: the same over TLS, to the sentinels and to the primary.

    urllib cannot parse a list of hosts, so the authority is split here."""
    scheme, _, rest = url.partition("://")
    tls = scheme.lower() == SENTINEL_TLS_SCHEME
    rest, _, query_text = rest.partition("?")
    if "#" in rest or "#" in query_text:
        raise invalid("unexpected '#' (percent-encode it as %23 in a password)")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts_text = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon and password_text else None
    query = parse_qs(query_text)
    username = username or _first(query, "username")
    password = password or _first(query, "password")
    sentinels = tuple(parse_host_port(h, SENTINEL_PORT, invalid) for h in hosts_text.split(","))
    service, _, db_text = unquote(path).strip("/").partition("/")
    if not service:
        raise invalid(f"name the primary's service: {scheme}://host:26379/mymaster[/db]")
    return Endpoint(
        source=source,
        db=_db_number(db_text or _first(query, "db"), invalid),
        username=username,
        password=password,
        sentinels=sentinels,
        service_name=service,
        sentinel_password=_first(query, "sentinel_password"),
        tls=tls,
    )


def parse_host_port(
    text: str, default_port: int, invalid: Callable[[str], ConfigError]
) -> tuple[str, int]:
    """`host:port`, `host` or `[v6::addr]:port` as (host, port)."""
    try:
        parts = urlsplit(f"//{text.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or parts.username is not None or parts.path:
        # Never echoes the text: in a URL with a stray ':' it may be a password.
        raise invalid("each sentinel must be host:port (an IPv6 host in brackets)")
    return host, port or default_port


def _db_number(text: str | None, invalid: Callable[[str], ConfigError]) -> int:
    if text is None or text == "":
        return 0
    if not (text.isascii() and text.isdigit()):
        raise invalid("the database must be a non-negative integer (…/0 or ?db=0)")
    return int(text)


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _unquoted(text: str | None) -> str | None:
    return unquote(text) if text else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
