"""Connecting to the town's Redis, with one clear line when that fails."""

from __future__ import annotations

import re

import redis

from ttsyncd.config import Settings
from ttsyncd.embedded import ensure_embedded
from ttsyncd.errors import RedisUnavailable

# The reason in an ssl error as redis-py passes it on, e.g. "[SSL: CERTIFICATE_VERIFY_FAILED]
# certificate verify failed: ...": it names no credentials.
TLS_ERROR = re.compile(r"\[SSL[^\]]*\]\s*([^(]+)")


def connect(settings: Settings) -> redis.Redis:
    """A client that answered PING; starts the embedded server when the town uses it."""
    endpoint = settings.endpoint
    if endpoint.managed and endpoint.unix_socket is not None:
        ensure_embedded(endpoint.unix_socket)
    client = endpoint.client()
    where = endpoint.redacted()
    try:
        client.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"Redis at {where} refused the credentials: check the user name and password "
            "(REDIS_URL, --redis-url, the config, or TINYTOWN_REDIS_PASSWORD)"
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailable(
                f"Redis at {where} needs a password: set it in REDIS_URL"
            ) from None
        raise RedisUnavailable(f"Redis at {where} refused PING: {error}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        tls_failure = TLS_ERROR.search(str(error)) if endpoint.tls else None
        if tls_failure:
            raise RedisUnavailable(
                f"TLS with Redis at {where} failed: {tls_failure.group(1).strip()}: check "
                "[redis] tls_ca_cert, tls_client_cert, tls_client_key and tls_verify in the config"
            ) from None
        raise RedisUnavailable(
            f"cannot reach Redis at {where} ({type(error).__name__}): is it running?"
        ) from None
    return client
