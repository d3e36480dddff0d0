"""Settings: town discovery, config precedence and checks, Redis endpoints, no leaked secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from ttsyncd.config import (
    LogSettings,
    MetricsSettings,
    Settings,
    SyncSettings,
    find_town,
    load_settings,
)
from ttsyncd.endpoints import Endpoint, endpoint_from_url
from ttsyncd.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

# Distinctive, so any leak shows up in a plain substring search.
PASSWORD = "Zq7-sekrit-pw-91"
# A password needing percent-encoding: neither its raw nor its encoded form may leak.
ODD_PASSWORD = "p@ss/w#rd?x"
ODD_PASSWORD_ENCODED = "p%40ss%2Fw%23rd%3Fx"


def make_town(root: Path, tinytown: str | None = None, config: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if tinytown is not None:
        (root / "tinytown.toml").write_text(tinytown)
    if config is not None:
        (root / "ttsyncd.toml").write_text(config)
    return root


def load(
    town: Path,
    *,
    env: dict[str, str] | None = None,
    config_arg: str | None = None,
    redis_url_arg: str | None = None,
) -> Settings:
    return load_settings(
        town_arg=str(town),
        config_arg=config_arg,
        redis_url_arg=redis_url_arg,
        env=env or {},
        cwd=town,
    )


def config_error(town: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(town, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def assert_no_secret(*texts: str, secrets: tuple[str, ...] = (PASSWORD,)) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"secret leaked into {text!r}"


# --- town discovery ---------------------------------------------------------------------------


def test_find_town_from_flag_relative_to_cwd(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town")
    assert find_town("town", {}, tmp_path) == town.resolve()
    assert find_town(str(town), {}, Path("/")) == town.resolve()


def test_find_town_flag_beats_env(tmp_path: Path) -> None:
    flagged = make_town(tmp_path / "flagged")
    from_env = make_town(tmp_path / "from-env")
    env = {"TTSYNCD_TOWN": str(from_env)}
    assert find_town(str(flagged), env, tmp_path) == flagged.resolve()
    assert find_town(None, env, tmp_path) == from_env.resolve()


@pytest.mark.parametrize("marker", ["tinytown.toml", "tasks.toml"])
def test_find_town_walks_up_from_a_subdirectory(tmp_path: Path, marker: str) -> None:
    town = make_town(tmp_path / "town")
    (town / marker).write_text("")
    deep = town / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_town(None, {}, deep) == town.resolve()


def test_find_town_without_a_town_file_up_the_tree_finds_none(tmp_path: Path) -> None:
    plain = make_town(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no town found") as caught:
        find_town(None, {}, plain)
    assert caught.value.exit_code == 2
    assert find_town(str(plain), {}, tmp_path) == plain.resolve()  # named, it is a town


@pytest.mark.parametrize("origin", ["--town", "TTSYNCD_TOWN"])
def test_find_town_rejects_a_missing_or_non_directory_town(tmp_path: Path, origin: str) -> None:
    (tmp_path / "a-file").write_text("")
    for bad in (tmp_path / "missing", tmp_path / "a-file"):
        town_arg, env = (str(bad), {}) if origin == "--town" else (None, {"TTSYNCD_TOWN": str(bad)})
        with pytest.raises(ConfigError, match=origin):
            find_town(town_arg, env, tmp_path)


# --- defaults and the config file -------------------------------------------------------------


def test_defaults_for_a_bare_directory(tmp_path: Path) -> None:
    town = make_town(tmp_path / "bare")
    settings = load(town)
    assert settings.town_dir == town.resolve()
    assert settings.town_name == "bare"
    assert settings.tasks_file == town.resolve() / "tasks.toml"
    assert settings.state_dir == town.resolve() / ".tt" / "ttsyncd"
    assert settings.config_path is None
    assert settings.sync == SyncSettings()
    assert settings.log == LogSettings()
    assert settings.endpoint.source == "embedded default"


def test_config_file_precedence(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", config='[log]\nlevel = "warning"\n')
    from_env = tmp_path / "env.toml"
    from_env.write_text('[log]\nlevel = "error"\n')
    from_flag = tmp_path / "flag.toml"
    from_flag.write_text('[log]\nlevel = "debug"\n')
    env = {"TTSYNCD_CONFIG": str(from_env)}

    assert load(town).log.level == "warning"
    assert load(town).config_path == town.resolve() / "ttsyncd.toml"
    assert load(town, env=env).log.level == "error"
    assert load(town, env=env).config_path == from_env.resolve()
    flagged = load(town, env=env, config_arg=str(from_flag))
    assert (flagged.log.level, flagged.config_path) == ("debug", from_flag.resolve())


@pytest.mark.parametrize("origin", ["--config", "TTSYNCD_CONFIG"])
def test_an_explicit_config_that_does_not_exist_is_an_error(tmp_path: Path, origin: str) -> None:
    town = make_town(tmp_path / "town")
    missing = str(tmp_path / "nope.toml")
    if origin == "--config":
        message = config_error(town, config_arg=missing)
    else:
        message = config_error(town, env={"TTSYNCD_CONFIG": missing})
    assert origin in message and "nope.toml" in message


def test_config_values_are_read(tmp_path: Path) -> None:
    town = make_town(
        tmp_path / "town",
        config="""
[town]
name = "alpha"
tasks_file = "plans/sprint.toml"
[sync]
policy = "manual"
deletions = "cancel"
max_delete_fraction = 1
max_delete_min = 0
file_debounce_ms = 0
file_max_wait_ms = 0
redis_debounce_ms = 10
redis_max_wait_ms = 20
poll_interval_ms = 1
[log]
format = "json"
""",
    )
    settings = load(town)
    assert settings.town_name == "alpha"
    assert settings.tasks_file == town.resolve() / "plans" / "sprint.toml"
    assert settings.sync == SyncSettings(
        policy="manual",
        deletions="cancel",
        max_delete_fraction=1.0,
        max_delete_min=0,
        file_debounce_ms=0,
        file_max_wait_ms=0,
        redis_debounce_ms=10,
        redis_max_wait_ms=20,
        poll_interval_ms=1,
    )
    assert settings.log == LogSettings(level="info", format="json")


def test_tinytown_name_beats_config_name(tmp_path: Path) -> None:
    town = make_town(tmp_path / "dir", tinytown='name = "tt-name"\n', config='[town]\nname = "c"\n')
    assert load(town).town_name == "tt-name"


def test_example_config_loads_to_the_defaults(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town")
    settings = load(town, config_arg=str(REPO_ROOT / "config.example.toml"))
    assert settings.sync == SyncSettings()
    assert settings.log == LogSettings()
    assert settings.metrics == MetricsSettings()  # no metrics unless listen is set
    assert settings.tasks_file == town.resolve() / "tasks.toml"
    assert settings.town_name == "town"
    assert settings.endpoint.source == "embedded default"


def test_example_config_documents_every_setting() -> None:
    text = (REPO_ROOT / "config.example.toml").read_text()
    keys = [*SyncSettings.__dataclass_fields__, *LogSettings.__dataclass_fields__]
    redis_keys = ["url", "tls_ca_cert", "tls_client_cert", "tls_client_key", "tls_verify"]
    for key in [
        *keys,
        *redis_keys,
        "name",
        "tasks_file",
        "[town]",
        "[redis]",
        "[sync]",
        "[log]",
        "[metrics]",
        "listen",
    ]:
        assert key in text, key


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("[bogus]\nx = 1\n", "bogus"),
        ("stray = 1\n", "stray"),
        ("[sync]\npolicy = 'owner'\nspeed = 3\n", "sync.speed"),
        ("[redis]\npassword = 'x'\n", "redis.password"),
        ("sync = 3\n", "sync"),
        ("[sync]\npolicy = 'newest'\n", "sync.policy"),
        ("[sync]\ndeletions = 'purge'\n", "sync.deletions"),
        ("[sync]\nmax_delete_fraction = 1.5\n", "sync.max_delete_fraction"),
        ("[sync]\nmax_delete_fraction = -0.1\n", "sync.max_delete_fraction"),
        ("[sync]\nmax_delete_fraction = '0.5'\n", "sync.max_delete_fraction"),
        ("[sync]\nmax_delete_min = -1\n", "sync.max_delete_min"),
        ("[sync]\nfile_debounce_ms = -5\n", "sync.file_debounce_ms"),
        ("[sync]\nredis_max_wait_ms = 2.5\n", "sync.redis_max_wait_ms"),
        ("[sync]\nfile_max_wait_ms = true\n", "sync.file_max_wait_ms"),
        ("[sync]\npoll_interval_ms = 0\n", "sync.poll_interval_ms"),
        ("[sync]\nfile_debounce_ms = 500\nfile_max_wait_ms = 100\n", "sync.file_max_wait_ms"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[town]\ntasks_file = 7\n", "town.tasks_file"),
        ("[town]\nname = ''\n", "town.name"),
        ("[redis]\nurl = 5\n", "redis.url"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, content: str, key: str) -> None:
    town = make_town(tmp_path / "town", config=content)
    message = config_error(town)
    assert str(town.resolve() / "ttsyncd.toml") in message
    assert key in message


def test_config_syntax_error_names_the_line(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", config=f'[redis]\nurl = "redis://:{PASSWORD}@h"\n[sync\n')
    message = config_error(town)
    assert "ttsyncd.toml" in message and "line 3" in message
    assert_no_secret(message)


# --- endpoints: precedence --------------------------------------------------------------------

TINYTOWN_TCP = f"""name = "t"
[redis]
use_socket = false
host = "10.0.0.9"
port = 7000
password = "{PASSWORD}"
"""


def test_endpoint_precedence(tmp_path: Path) -> None:
    town = make_town(
        tmp_path / "town",
        tinytown=TINYTOWN_TCP,
        config=f'[redis]\nurl = "redis://:{PASSWORD}@config-host:1/1"\n',
    )
    env = {"REDIS_URL": "redis://env-host:2/2"}
    cli = "redis://cli-host:3/3"

    def identity(**kwargs: object) -> tuple[str, str]:
        endpoint = load(town, **kwargs).endpoint  # type: ignore[arg-type]
        return endpoint.source, endpoint.identity()

    assert identity(env=env, redis_url_arg=cli) == ("--redis-url", "tcp:cli-host:3/3")
    assert identity(env=env) == ("REDIS_URL", "tcp:env-host:2/2")
    config_path = town.resolve() / "ttsyncd.toml"
    assert identity() == (f"config {config_path}", "tcp:config-host:1/1")
    (town / "ttsyncd.toml").unlink()
    assert identity() == ("tinytown.toml", "tcp:10.0.0.9:7000/0")
    (town / "tinytown.toml").write_text('name = "t"\n')
    assert identity() == ("embedded default", f"unix:{town.resolve()}/.tt/redis.sock/0")
    (town / "tinytown.toml").unlink()
    assert identity() == ("embedded default", f"unix:{town.resolve()}/.tt/redis.sock/0")


def test_an_empty_redis_url_env_counts_as_unset(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town")
    assert load(town, env={"REDIS_URL": ""}).endpoint.source == "embedded default"


def test_embedded_default_is_managed(tmp_path: Path) -> None:
    endpoint = load(make_town(tmp_path / "town")).endpoint
    assert endpoint.managed
    assert endpoint.unix_socket == (tmp_path / "town").resolve() / ".tt" / "redis.sock"
    assert endpoint.url is None and endpoint.password is None


def test_explicit_urls_are_never_managed(tmp_path: Path) -> None:
    socket = tmp_path / "town" / ".tt" / "redis.sock"
    town = make_town(tmp_path / "town", tinytown=f'[redis]\nurl = "unix://{socket}"\n')
    assert load(town).endpoint.unix_socket == socket.resolve()
    assert not load(town).endpoint.managed
    assert not load(town, env={"REDIS_URL": f"unix://{socket}"}).endpoint.managed
    assert not load(town, redis_url_arg=f"unix://{socket}").endpoint.managed


# --- endpoints: tinytown.toml -----------------------------------------------------------------


def test_tinytown_socket_defaults(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown="[redis]\n")
    endpoint = load(town).endpoint
    assert endpoint.source == "tinytown.toml"
    assert endpoint.unix_socket == town.resolve() / ".tt" / "redis.sock"
    assert endpoint.managed
    assert endpoint.redacted() == f"unix://{town.resolve()}/.tt/redis.sock"


@pytest.mark.parametrize("socket_path", ["run/r.sock", "../shared/r.sock"])
def test_tinytown_socket_path_is_relative_to_the_town(tmp_path: Path, socket_path: str) -> None:
    town = make_town(tmp_path / "town", tinytown=f'[redis]\nsocket_path = "{socket_path}"\n')
    # Loaded from elsewhere: the socket still lives relative to the town, not to cwd.
    settings = load_settings(
        town_arg=str(town), config_arg=None, redis_url_arg=None, env={}, cwd=Path("/")
    )
    assert settings.endpoint.unix_socket == (town / socket_path).resolve()
    assert settings.endpoint.managed


def test_tinytown_socket_path_may_be_absolute(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown=f'[redis]\nsocket_path = "{tmp_path}/x.sock"\n')
    assert load(town).endpoint.unix_socket == tmp_path.resolve() / "x.sock"


def test_tinytown_socket_mode_sends_no_password(tmp_path: Path) -> None:
    # tinytown's own server on the socket has no password and tinytown sends none over it.
    town = make_town(tmp_path / "town", tinytown=f'[redis]\npassword = "{PASSWORD}"\n')
    assert load(town, env={"TINYTOWN_REDIS_PASSWORD": "x"}).endpoint.password is None


def test_tinytown_url_wins_within_the_table(tmp_path: Path) -> None:
    town = make_town(
        tmp_path / "town",
        tinytown=f'[redis]\nuse_socket = false\nhost = "ignored"\nurl = "redis://:{PASSWORD}@u:9/4"\n',
    )
    endpoint = load(town).endpoint
    assert endpoint.identity() == "tcp:u:9/4"
    assert endpoint.password == PASSWORD and not endpoint.managed


def test_tinytown_tcp(tmp_path: Path) -> None:
    endpoint = load(make_town(tmp_path / "town", tinytown=TINYTOWN_TCP)).endpoint
    assert (endpoint.host, endpoint.port, endpoint.db) == ("10.0.0.9", 7000, 0)
    assert endpoint.password == PASSWORD
    assert endpoint.unix_socket is None and endpoint.url is None
    assert not endpoint.tls and not endpoint.managed
    assert endpoint.redacted() == "redis://:***@10.0.0.9:7000/0"


def test_tinytown_tcp_defaults(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown="[redis]\nuse_socket = false\n")
    endpoint = load(town).endpoint
    assert endpoint.identity() == "tcp:127.0.0.1:6379/0"
    assert endpoint.password is None
    assert endpoint.redacted() == "redis://127.0.0.1:6379/0"


def test_tinytown_redis_password_env_overrides_the_file(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown=TINYTOWN_TCP)
    endpoint = load(town, env={"TINYTOWN_REDIS_PASSWORD": "from-env"}).endpoint
    assert endpoint.password == "from-env"
    no_password = make_town(tmp_path / "other", tinytown="[redis]\nuse_socket = false\n")
    env = {"TINYTOWN_REDIS_PASSWORD": PASSWORD}
    assert load(no_password, env=env).endpoint.password == PASSWORD


def test_tinytown_tls(tmp_path: Path) -> None:
    town = make_town(
        tmp_path / "town",
        tinytown=(
            "[redis]\nuse_socket = false\nhost = 'redis.example'\nport = 6380\n"
            f"password = '{PASSWORD}'\ntls_enabled = true\ntls_ca_cert = 'certs/ca.pem'\n"
        ),
    )
    endpoint = load(town).endpoint
    assert endpoint.tls
    assert endpoint.tls_ca_cert == town.resolve() / "certs" / "ca.pem"
    assert endpoint.redacted() == "rediss://:***@redis.example:6380/0"
    # The client is built without connecting: check what it would connect with.
    client = endpoint.client()
    pool_kwargs = client.connection_pool.connection_kwargs
    assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    assert pool_kwargs["ssl_ca_certs"] == str(town.resolve() / "certs" / "ca.pem")
    assert (pool_kwargs["host"], pool_kwargs["port"], pool_kwargs["password"]) == (
        "redis.example",
        6380,
        PASSWORD,
    )
    client.close()


def test_tinytown_central_redis(tmp_path: Path) -> None:
    # What `tt init` writes for a town on tinytown's central Redis.
    town = make_town(
        tmp_path / "town",
        tinytown=(
            'name = "central"\n[redis]\nuse_socket = false\nsocket_path = "redis.sock"\n'
            f'host = "127.0.0.1"\nport = 16379\npersist = false\npassword = "{PASSWORD}"\n'
            'tls_enabled = false\nbind = "127.0.0.1"\n'
        ),
    )
    settings = load(town)
    assert settings.town_name == "central"
    endpoint = settings.endpoint
    assert endpoint.identity() == "tcp:127.0.0.1:16379/0"
    assert endpoint.password == PASSWORD and not endpoint.managed
    assert endpoint.redacted() == "redis://:***@127.0.0.1:16379/0"


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("[redis]\nport = 'six'\n", "redis.port"),
        ("[redis]\nport = 70000\n", "redis.port"),
        ("[redis]\nuse_socket = 1\n", "redis.use_socket"),
        ("[redis]\npassword = 12345678987\n", "redis.password"),
        ("redis = 'x'\n", "redis"),
        ("name = 3\n", "name"),
    ],
)
def test_tinytown_errors_name_the_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    town = make_town(tmp_path / "town", tinytown=content)
    message = config_error(town)
    assert "tinytown.toml" in message and key in message
    assert_no_secret(message, secrets=("12345678987",))


def test_tinytown_syntax_error(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown='name = "x"\n[redis\n')
    message = config_error(town)
    assert "tinytown.toml" in message and "line 2" in message


def test_tinytown_ignores_keys_it_does_not_share(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown='max_agents = 3\n[redis]\naof_path = "x"\n')
    assert load(town).endpoint.source == "tinytown.toml"


# --- endpoints: URLs --------------------------------------------------------------------------


def test_url_fields() -> None:
    endpoint = endpoint_from_url(f"rediss://alice:{PASSWORD}@Cache.Example:6390/2", "test")
    assert (endpoint.host, endpoint.port, endpoint.db) == ("cache.example", 6390, 2)
    assert (endpoint.username, endpoint.password, endpoint.tls) == ("alice", PASSWORD, True)
    assert endpoint.redacted() == "rediss://alice:***@cache.example:6390/2"
    assert endpoint.identity() == "tcp:cache.example:6390/2"


def test_url_defaults_and_query_db() -> None:
    assert endpoint_from_url("redis://", "t").identity() == "tcp:localhost:6379/0"
    assert endpoint_from_url("redis://h/1?db=5", "t").db == 5
    assert endpoint_from_url("redis://[::1]:7/0", "t").identity() == "tcp:[::1]:7/0"


def test_unix_url_with_password_query() -> None:
    endpoint = endpoint_from_url(f"unix:///run/r.sock?db=3&password={PASSWORD}", "t")
    assert (endpoint.unix_socket, endpoint.db, endpoint.password) == (
        Path("/run/r.sock"),
        3,
        PASSWORD,
    )
    assert endpoint.redacted() == "unix://:***@/run/r.sock?db=3"
    assert endpoint.identity() == "unix:/run/r.sock/3"


def test_percent_encoded_password_is_decoded() -> None:
    endpoint = endpoint_from_url(f"redis://bob:{ODD_PASSWORD_ENCODED}@h:1/0", "t")
    assert endpoint.password == ODD_PASSWORD


BAD_URLS = [
    f"http://:{PASSWORD}@h:1/0",  # scheme
    f"redis:/{PASSWORD}",  # scheme-ish garbage
    f"{PASSWORD}",  # no scheme at all
    f"redis://u:{PASSWORD}@h:notaport/0",  # port
    f"redis://:{PASSWORD}@h:99999/0",  # port out of range
    f"redis://:{PASSWORD}@h:1/zero",  # db
    f"redis://:pa/{PASSWORD}@h:1/0",  # unencoded '/' in the password
    f"redis://:pa#{PASSWORD}@h:1/0",  # unencoded '#' in the password
    f"redis://:{PASSWORD}@[::1:1/0",  # broken IPv6 literal
    f"unix://:{PASSWORD}@host/run/r.sock",  # unix with a host
    f"unix://relative.sock?password={PASSWORD}",
    f"unix:///r.sock?db=x&password={PASSWORD}",
    "",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_name_their_source_and_hide_the_password(tmp_path: Path, url: str) -> None:
    town = make_town(tmp_path / "town")
    assert_no_secret(config_error(town, redis_url_arg=url))
    assert "--redis-url" in config_error(town, redis_url_arg=url)
    if url:
        assert "REDIS_URL" in config_error(town, env={"REDIS_URL": url})
    (town / "ttsyncd.toml").write_text(f"[redis]\nurl = {url!r}\n")
    message = config_error(town)
    assert "ttsyncd.toml" in message
    assert_no_secret(message)
    (town / "ttsyncd.toml").unlink()
    (town / "tinytown.toml").write_text(f"[redis]\nurl = {url!r}\n")
    if url:  # an empty tinytown url means "no url"
        message = config_error(town)
        assert "tinytown.toml" in message
        assert_no_secret(message)


# --- secrets never leak -----------------------------------------------------------------------

LEAKY_URLS = [
    f"redis://:{PASSWORD}@h:1/0",
    f"redis://alice:{PASSWORD}@h:1/0",
    f"rediss://user:{PASSWORD}@h:1/2",
    f"unix:///run/r.sock?password={PASSWORD}",
    f"unix://alice:{PASSWORD}@/run/r.sock?db=1",
    f"redis://h:1/0?password={PASSWORD}",
]


@pytest.mark.parametrize("url", LEAKY_URLS)
def test_urls_never_leak_the_password(url: str) -> None:
    endpoint = endpoint_from_url(url, "--redis-url")
    assert endpoint.password == PASSWORD
    assert "***" in endpoint.redacted()
    assert_no_secret(endpoint.redacted(), endpoint.identity(), repr(endpoint), str(endpoint))


def test_encoded_passwords_never_leak() -> None:
    endpoint = endpoint_from_url(f"rediss://u:{ODD_PASSWORD_ENCODED}@h:1/2", "t")
    secrets = (ODD_PASSWORD, ODD_PASSWORD_ENCODED, "p@ss", "p%40ss")
    assert_no_secret(endpoint.redacted(), endpoint.identity(), repr(endpoint), secrets=secrets)


def test_settings_repr_never_leaks_the_password(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", tinytown=TINYTOWN_TCP)
    settings = load(town, env={"TINYTOWN_REDIS_PASSWORD": PASSWORD})
    endpoint = settings.endpoint
    assert endpoint.password == PASSWORD
    assert_no_secret(repr(settings), endpoint.redacted(), endpoint.identity())
    via_url = load(town, redis_url_arg=f"redis://:{PASSWORD}@h:1/0")
    assert_no_secret(repr(via_url), via_url.endpoint.redacted(), via_url.endpoint.identity())


def test_identity_ignores_credentials() -> None:
    with_password = endpoint_from_url(f"redis://u:{PASSWORD}@h:1/0", "a")
    without = endpoint_from_url("redis://h:1", "b")
    assert with_password.identity() == without.identity()


# --- real connections -------------------------------------------------------------------------


def test_client_from_unix_url_pings(redis_socket: Path) -> None:
    endpoint = endpoint_from_url(f"unix://{redis_socket}", "--redis-url")
    client = endpoint.client()
    try:
        assert client.ping()
        assert client.echo("hi") == "hi"
    finally:
        client.close()
    raw = endpoint.client(decode_responses=False)
    try:
        assert raw.echo("hi") == b"hi"
    finally:
        raw.close()


@pytest.mark.parametrize("relative", [False, True])
def test_client_from_tinytown_socket_pings(
    tmp_path: Path, redis_socket: Path, relative: bool
) -> None:
    town = make_town(tmp_path / "town")
    socket_path = os.path.relpath(redis_socket, town.resolve()) if relative else str(redis_socket)
    (town / "tinytown.toml").write_text(
        f'name = "t"\n[redis]\nuse_socket = true\nsocket_path = "{socket_path}"\n'
    )
    endpoint = load(town).endpoint
    assert endpoint.unix_socket == redis_socket.resolve()
    assert endpoint.url is None and endpoint.managed
    client = endpoint.client(timeout_s=2.0)
    try:
        assert client.ping()
    finally:
        client.close()


def test_endpoint_is_hashable_and_comparable() -> None:
    # Frozen: usable as a dict key, e.g. to reuse one client per endpoint.
    first = endpoint_from_url("redis://h:1/0", "x")
    assert {first: 1}[endpoint_from_url("redis://h:1/0", "x")] == 1
    assert isinstance(first, Endpoint)


# --- TLS options and ACL users ----------------------------------------------------------------


def tls_files(town: Path) -> dict[str, Path]:
    """Stand-in PEM files: the config only checks they exist (the real ones: test_tls_acl)."""
    files = {}
    for key, name in (("tls_ca_cert", "ca.pem"), ("tls_client_cert", "client.pem"),
                      ("tls_client_key", "client.key")):  # fmt: skip
        path = town / "certs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("-----BEGIN NOTHING-----\n")
        files[key] = path
    return files


TLS_CONFIG = """[redis]
tls_ca_cert = "certs/ca.pem"
tls_client_cert = "certs/client.pem"
tls_client_key = "certs/client.key"
tls_verify = "required"
"""


@pytest.mark.parametrize(
    ("where", "url"),
    [
        ("--redis-url", f"rediss://ttsyncd:{PASSWORD}@cache.example:6390/0"),
        ("REDIS_URL", f"rediss://ttsyncd:{PASSWORD}@cache.example:6390/0"),
        ("config", f"rediss://ttsyncd:{PASSWORD}@cache.example:6390/0"),
        ("tinytown", ""),
    ],
)
def test_config_tls_options_reach_redis_py(tmp_path: Path, where: str, url: str) -> None:
    town = make_town(tmp_path / "town")
    files = tls_files(town)
    config = TLS_CONFIG + (f'url = "{url}"\n' if where == "config" else "")
    (town / "ttsyncd.toml").write_text(config)
    if where == "tinytown":
        (town / "tinytown.toml").write_text(
            "[redis]\nuse_socket = false\nhost = 'cache.example'\nport = 6390\n"
            f"password = '{PASSWORD}'\ntls_enabled = true\ntls_ca_cert = 'elsewhere.pem'\n"
        )
    endpoint = load(
        town,
        redis_url_arg=url if where == "--redis-url" else None,
        env={"REDIS_URL": url} if where == "REDIS_URL" else None,
    ).endpoint
    assert endpoint.tls and endpoint.tls_verify == "required"
    assert endpoint.tls_ca_cert == files["tls_ca_cert"].resolve()  # the config beats tinytown
    client = endpoint.client()
    kwargs = client.connection_pool.connection_kwargs
    assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == tuple(
        str(files[key].resolve()) for key in ("tls_ca_cert", "tls_client_cert", "tls_client_key")
    )
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["password"] == PASSWORD
    client.close()
    aclient = endpoint.async_client()
    assert aclient.connection_pool.connection_kwargs["ssl_certfile"] == kwargs["ssl_certfile"]
    shown = endpoint.redacted()
    assert shown.startswith("rediss://") and "cache.example:6390/0" in shown
    assert_no_secret(shown, repr(endpoint), repr(load(town)))


def test_tls_options_leave_plain_and_unix_endpoints_alone(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", config=TLS_CONFIG)
    tls_files(town)
    for url in ("redis://h:1/0", "unix:///run/r.sock"):
        endpoint = load(town, redis_url_arg=url).endpoint
        assert not endpoint.tls and endpoint.tls_client_cert is None
        assert endpoint.tls_options() == {}
        endpoint.client().close()  # redis-py accepts the options it gets


def test_url_query_tls_options_win_over_the_config(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", config=TLS_CONFIG)
    tls_files(town)
    url = "rediss://h:1/0?ssl_cert_reqs=none&ssl_ca_certs=/from/the/url.pem"
    kwargs = load(town, redis_url_arg=url).endpoint.client().connection_pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == ("none", "/from/the/url.pem")
    assert kwargs["ssl_certfile"] == str((town / "certs" / "client.pem").resolve())


@pytest.mark.parametrize("mode", ["required", "optional", "none", "NONE"])
def test_tls_verify_modes(tmp_path: Path, mode: str) -> None:
    town = make_town(tmp_path / "town", config=f'[redis]\ntls_verify = "{mode}"\n')
    endpoint = load(town, redis_url_arg="rediss://h:1/0").endpoint
    assert endpoint.tls_options() == {"ssl_cert_reqs": mode.lower()}
    assert endpoint.tls_ca_cert is None and endpoint.tls_client_cert is None


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('[redis]\ntls_verify = "sometimes"\n', "redis.tls_verify"),
        ("[redis]\ntls_ca_cert = 7\n", "redis.tls_ca_cert"),
        ('[redis]\ntls_ca_cert = "missing.pem"\n', "redis.tls_ca_cert"),
        ('[redis]\ntls_client_cert = "certs"\n', "redis.tls_client_cert"),  # a directory
        ('[redis]\ntls_client_key = "certs/client.key"\n', "redis.tls_client_key"),  # no cert
        ('[redis]\ntls_password = "x"\n', "redis.tls_password"),
    ],
)
def test_tls_option_errors_name_the_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    town = make_town(tmp_path / "town", config=content)
    tls_files(town)
    message = config_error(town, redis_url_arg=f"rediss://u:{PASSWORD}@h:1/0")
    assert str(town.resolve() / "ttsyncd.toml") in message and key in message
    assert_no_secret(message)


def test_acl_user_is_shown_and_its_password_is_not() -> None:
    endpoint = endpoint_from_url(f"rediss://ttsyncd:{PASSWORD}@h:6390/0", "REDIS_URL")
    assert (endpoint.username, endpoint.password) == ("ttsyncd", PASSWORD)
    assert endpoint.redacted() == "rediss://ttsyncd:***@h:6390/0"
    by_query = endpoint_from_url(f"redis://h:1/0?username=ttsyncd&password={PASSWORD}", "t")
    assert by_query.redacted() == "redis://ttsyncd:***@h:1/0"
    user_only = endpoint_from_url("redis://ttsyncd@h:1/0", "t")
    assert user_only.redacted() == "redis://ttsyncd@h:1/0"


# --- [metrics] ----------------------------------------------------------------------------------


def test_metrics_listen_is_off_by_default_and_read_as_host_and_port(tmp_path: Path) -> None:
    assert load(make_town(tmp_path / "a", config="")).metrics.listen is None
    town = make_town(tmp_path / "b", config='[metrics]\nlisten = "127.0.0.1:9464"\n')
    assert load(town).metrics.listen == ("127.0.0.1", 9464)
    town = make_town(tmp_path / "c", config='[metrics]\nlisten = "[::1]:9464"\n')
    assert load(town).metrics.listen == ("::1", 9464)


@pytest.mark.parametrize(
    "value", ['"9464"', '"127.0.0.1"', '":9464"', '"localhost:0"', '"localhost:70000"',
              '"host:port"', '"127.0.0.1:9464/metrics"', "9464", "true"],
)  # fmt: skip
def test_a_bad_metrics_listen_names_the_file_and_the_key(tmp_path: Path, value: str) -> None:
    town = make_town(tmp_path, config=f"[metrics]\nlisten = {value}\n")
    message = config_error(town)
    assert message.startswith(f"{town / 'ttsyncd.toml'}: metrics.listen must be")
    assert "host:port" in message


def test_an_unknown_metrics_key_is_refused(tmp_path: Path) -> None:
    town = make_town(tmp_path, config="[metrics]\nport = 9464\n")
    assert "unknown key metrics.port (known: listen)" in config_error(town)
