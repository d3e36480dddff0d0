"""Sentinel and Cluster endpoints in every place an endpoint is accepted (--redis-url, REDIS_URL,
the config's [redis] table, tinytown.toml's url), and what `status` shows of them (addresses,
never a secret). No server needed; the live topologies are in test_cluster.py and
test_sentinel.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import PASSWORD, assert_no_secret, config_error, load, make_town
from ttsyncd.endpoints import Endpoint, endpoint_from_url
from ttsyncd.status_text import status_lines
from ttsyncd.topology import Topology

SENTINEL_URL = f"redis+sentinel://alice:{PASSWORD}@s1.example:26380,[::1]:26381,s3/towns/2"


def test_sentinel_url_fields() -> None:
    endpoint = endpoint_from_url(SENTINEL_URL, "--redis-url")
    assert endpoint.sentinels == (("s1.example", 26380), ("::1", 26381), ("s3", 26379))
    assert (endpoint.service_name, endpoint.db) == ("towns", 2)
    assert (endpoint.username, endpoint.password) == ("alice", PASSWORD)
    assert endpoint.is_sentinel and endpoint.url is None
    assert endpoint.redacted() == (
        "redis+sentinel://alice:***@s1.example:26380,[::1]:26381,s3:26379/towns/2"
    )
    # The service, not a server: a failover keeps the base; credentials are no part of it.
    assert endpoint.identity() == "sentinel:[::1]:26381,s1.example:26380,s3:26379/towns/2"
    assert_no_secret(endpoint.redacted(), endpoint.identity(), repr(endpoint))


def test_sentinel_url_defaults_and_query() -> None:
    endpoint = endpoint_from_url(
        f"redis+sentinel://h/svc?password={PASSWORD}&sentinel_password=sp", "t"
    )
    assert (endpoint.sentinels, endpoint.db, endpoint.password) == (
        (("h", 26379),),
        0,
        PASSWORD,
    )
    assert endpoint.sentinel_password == "sp"
    assert "sp" not in repr(endpoint) and PASSWORD not in repr(endpoint)
    assert endpoint_from_url("redis+sentinel://h:1/svc/", "t").db == 0


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{PASSWORD}@h:1",  # no service
        f"redis+sentinel://:{PASSWORD}@h:1/",  # empty service
        f"redis+sentinel://u:{PASSWORD}@h:port/svc",  # port
        f"redis+sentinel://u:{PASSWORD}/svc",  # no '@': the password would read as a port
        f"redis+sentinel://u:{PASSWORD}@h:1,,h:2/svc",  # an empty host
        f"redis+sentinel://u:{PASSWORD}@h:1/svc/db",  # db
        f"redis+sentinel://u:pa#{PASSWORD}@h:1/svc",  # unencoded '#'
    ],
)
def test_bad_sentinel_urls_name_their_source_and_hide_the_password(
    tmp_path: Path, url: str
) -> None:
    town = make_town(tmp_path / "town")
    for kwargs, origin in (
        ({"redis_url_arg": url}, "--redis-url"),
        ({"env": {"REDIS_URL": url}}, "REDIS_URL"),
    ):
        message = config_error(town, **kwargs)
        assert origin in message
        assert_no_secret(message)
    (town / "ttsyncd.toml").write_text(f"[redis]\nurl = {url!r}\n")
    message = config_error(town)
    assert "ttsyncd.toml" in message
    assert_no_secret(message)


def test_sentinel_url_in_every_place_an_endpoint_is_accepted(tmp_path: Path) -> None:
    url = "redis+sentinel://s:26379/towns/1"
    town = make_town(tmp_path / "town", tinytown=f'name = "t"\n[redis]\nurl = "{url}"\n')
    assert load(town).endpoint.identity() == "sentinel:s:26379/towns/1"
    assert load(town, env={"REDIS_URL": url}).endpoint.source == "REDIS_URL"
    assert load(town, redis_url_arg=url).endpoint.source == "--redis-url"
    (town / "ttsyncd.toml").write_text(f'[redis]\nurl = "{url}"\n')
    assert load(town).endpoint.source.startswith("config ")


def test_sentinels_in_the_config(tmp_path: Path) -> None:
    town = make_town(
        tmp_path / "town",
        config=(
            '[redis]\nsentinels = ["10.0.0.1:26379", "10.0.0.2", "[fe80::1]:5000"]\n'
            f'service_name = "towns"\ndb = 3\nusername = "tt"\npassword = "{PASSWORD}"\n'
            'sentinel_password = "sentinel-secret"\n'
        ),
    )
    endpoint = load(town).endpoint
    assert endpoint.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fe80::1", 5000))
    assert (endpoint.service_name, endpoint.db, endpoint.username) == ("towns", 3, "tt")
    assert (endpoint.password, endpoint.sentinel_password) == (PASSWORD, "sentinel-secret")
    assert endpoint.redacted().startswith("redis+sentinel://tt:***@10.0.0.1:26379,")
    assert_no_secret(repr(endpoint), endpoint.redacted(), secrets=(PASSWORD, "sentinel-secret"))
    # --redis-url and REDIS_URL still come first.
    assert not load(town, env={"REDIS_URL": "redis://h:1/0"}).endpoint.is_sentinel


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('[redis]\nsentinels = ["h:1"]\n', "redis.service_name"),
        ('[redis]\nsentinels = []\nservice_name = "s"\n', "redis.sentinels"),
        ('[redis]\nsentinels = "h:1"\nservice_name = "s"\n', "redis.sentinels"),
        ('[redis]\nsentinels = ["h:x"]\nservice_name = "s"\n', "redis.sentinels"),
        ('[redis]\nurl = "redis://h"\nsentinels = ["h:1"]\nservice_name = "s"\n', "redis.url"),
        ('[redis]\nsentinels = ["h:1"]\nservice_name = "s"\ncluster = true\n', "redis.cluster"),
        ('[redis]\nurl = "redis://h"\npassword = "x"\n', "redis.password"),
        ('[redis]\nservice_name = "s"\n', "redis.service_name"),
        ('[redis]\nsentinels = ["h:1"]\nservice_name = "s"\ndb = -1\n', "redis.db"),
        ("[redis]\ncluster = 1\n", "redis.cluster"),
        ('[redis]\ncluster = "yes"\n', "redis.cluster"),
        ('[redis]\nurl = "rediss://h"\ntls = true\n', "redis.tls"),
        ('[redis]\nsentinels = ["h:1"]\nservice_name = "s"\ntls = "yes"\n', "redis.tls"),
    ],
)
def test_topology_config_errors_name_the_key(tmp_path: Path, content: str, key: str) -> None:
    town = make_town(tmp_path / "town", config=content)
    message = config_error(town)
    assert "ttsyncd.toml" in message and key in message


def test_cluster_flag_applies_to_the_config_url_only(tmp_path: Path) -> None:
    town = make_town(tmp_path / "town", config='[redis]\nurl = "redis://n1:7000"\ncluster = true\n')
    assert load(town).endpoint.cluster is True
    # An endpoint given on the command line or in REDIS_URL is another Redis: detected.
    assert load(town, redis_url_arg="redis://n2:7000").endpoint.cluster is None
    (town / "ttsyncd.toml").write_text('[redis]\nurl = "redis://n1:7000"\ncluster = false\n')
    assert load(town).endpoint.cluster is False
    (town / "ttsyncd.toml").write_text('[redis]\nurl = "redis://n1:7000"\n')
    assert load(town).endpoint.cluster is None


def test_sentinel_clients_point_at_the_service() -> None:
    endpoint = endpoint_from_url(f"redis+sentinel://u:{PASSWORD}@127.0.0.1:1/towns/4", "t")
    client = endpoint.client()  # nothing connects until a command is sent
    pool = client.connection_pool
    assert pool.service_name == "towns"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == PASSWORD
    assert "host" not in pool.connection_kwargs and "ssl" not in pool.connection_kwargs
    assert endpoint.async_client().connection_pool.service_name == "towns"  # type: ignore[attr-defined]


def test_status_shows_the_topology_without_secrets() -> None:
    base = {
        "mode": "foreground", "pid": 1, "town": "t", "tasks_file": "tasks.toml",
        "redis": "redis+sentinel://u:***@h:1/towns/0", "redis_connected": True,
        "notifications": "keyspace", "last_push": None, "last_pull": None,
        "pending_events": {"file": False, "redis": 0}, "conflicts": 0,
        "conflicts_pending": 0, "last_error": None,
    }  # fmt: skip
    topologies = {
        "standalone": Topology("standalone"),
        "sentinel (service 'towns', primary 10.0.0.5:6380)": Topology(
            "sentinel", ("10.0.0.5:6380",), "towns"
        ),
        "cluster (3 primaries: a:1, b:2, c:3)": Topology("cluster", ("a:1", "b:2", "c:3")),
        "cluster (primaries not known yet)": Topology("cluster"),
    }
    for line, topology in topologies.items():
        lines = status_lines({**base, "topology": topology.to_json()})
        assert f"  topology:      {line}" in lines
        assert Topology.from_json(topology.to_json()) == topology


def test_endpoint_defaults_are_standalone() -> None:
    endpoint = Endpoint(source="x", host="h", port=1)
    assert not endpoint.is_sentinel and endpoint.cluster is None


def test_rediss_sentinel_url_is_tls_to_the_sentinels_and_the_primary(tmp_path: Path) -> None:
    """`rediss+sentinel://`, or `tls = true` beside `sentinels`: TLS both ways, with the
    config's tls_* files for the sentinels' connections and the primary's alike."""
    certs = tmp_path / "town" / "certs"
    certs.mkdir(parents=True)
    for name in ("ca.pem", "client.pem", "client.key"):
        (certs / name).write_text("PEM")
    tls_keys = (
        'tls_ca_cert = "certs/ca.pem"\ntls_client_cert = "certs/client.pem"\n'
        'tls_client_key = "certs/client.key"\ntls_verify = "required"\n'
    )
    url = SENTINEL_URL.replace("redis+sentinel://", "rediss+sentinel://")
    town = make_town(tmp_path / "town", config="[redis]\n" + tls_keys)
    from_url = load(town, env={"REDIS_URL": url}).endpoint
    table = make_town(
        tmp_path / "table",
        config=(
            '[redis]\nsentinels = ["s1.example:26380", "[::1]:26381", "s3"]\n'
            f'service_name = "towns"\ndb = 2\nusername = "alice"\npassword = "{PASSWORD}"\n'
            "tls = true\n" + tls_keys.replace("certs/", f"{certs}/")
        ),
    )
    from_table = load(table).endpoint
    for endpoint in (from_url, from_table):
        assert endpoint.is_sentinel and endpoint.tls
        assert endpoint.tls_ca_cert == certs / "ca.pem"
        assert endpoint.redacted() == (
            "rediss+sentinel://alice:***@s1.example:26380,[::1]:26381,s3:26379/towns/2"
        )
        _url, options = endpoint.connection_options(True, 1.0)
        to_sentinels, to_primary = endpoint.sentinel_options(options)
        for side in (to_sentinels["sentinel_kwargs"], to_primary):
            assert side["ssl"] is True and side["ssl_cert_reqs"] == "required"
            assert side["ssl_ca_certs"] == str(certs / "ca.pem")
            assert side["ssl_certfile"] == str(certs / "client.pem")
            assert side["ssl_keyfile"] == str(certs / "client.key")
        assert_no_secret(repr(endpoint), endpoint.redacted(), secrets=(PASSWORD,))
    plain = endpoint_from_url(SENTINEL_URL, "t")
    _url, options = plain.connection_options(True, 1.0)
    to_sentinels, to_primary = plain.sentinel_options(options)
    assert "ssl" not in to_sentinels["sentinel_kwargs"] and "ssl" not in to_primary
