"""Connecting to the town's Redis, with one clear line when that fails."""

from __future__ import annotations

import redis

from ttsyncd.config import Settings
from ttsyncd.embedded import ensure_embedded
from ttsyncd.errors import RedisUnavailable
from ttsyncd.topology import RedisClient, open_client


def connect(settings: Settings) -> RedisClient:
    """A client that answered PING (of a Cluster, when the server is a cluster node); starts the
    embedded server when the town uses it."""
    endpoint = settings.endpoint
    if endpoint.managed and endpoint.unix_socket is not None:
        ensure_embedded(endpoint.unix_socket)
    where = endpoint.redacted()
    try:
        client = open_client(endpoint)
        client.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"Redis at {where} refused the credentials: check the password "
            "(REDIS_URL, --redis-url, the config, or TINYTOWN_REDIS_PASSWORD)"
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailable(
                f"Redis at {where} needs a password: set it in REDIS_URL"
            ) from None
        raise RedisUnavailable(f"Redis at {where} refused PING: {error}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise RedisUnavailable(
            f"cannot reach Redis at {where} ({type(error).__name__}): is it running?"
        ) from None
    except redis.RedisClusterException as error:  # e.g. `cluster = true` on a plain server
        raise RedisUnavailable(f"Redis at {where} is not a usable cluster: {error}") from None
    return client
