"""Connecting to the town's Redis, with one clear line when that fails."""

from __future__ import annotations

import re
from typing import Final

import redis
from redis.exceptions import NoPermissionError

from ttsyncd.config import Settings
from ttsyncd.embedded import ensure_embedded
from ttsyncd.endpoints import Endpoint
from ttsyncd.errors import RedisUnavailable, TtsyncdError
from ttsyncd.topology import UNREACHABLE, RedisClient, open_client, remember_cluster_nodes

# The reason in an ssl error as redis-py passes it on, e.g. "[SSL: CERTIFICATE_VERIFY_FAILED]
# certificate verify failed: ...": it names no credentials.
TLS_ERROR = re.compile(r"\[SSL[^\]]*\]\s*([^(]+)")
# A server refusing the client's certificate (or its absence) may close the connection before
# its TLS alert is read: then the error says only that.
TLS_DROPPED = ("EOF occurred in violation of protocol", "reset by peer", "closed by server")


def tls_failure(error: Exception) -> str | None:
    """Why a TLS connection failed, when the error says; None when it does not look like TLS."""
    text = str(error)
    reason = TLS_ERROR.search(text)
    if reason:
        return reason.group(1).strip()
    if any(sign in text for sign in TLS_DROPPED):
        return "the server closed the connection (does it want a client certificate?)"
    return None


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
        why = tls_failure(error) if endpoint.tls else None
        if why:
            raise RedisUnavailable(
                f"TLS with Redis at {where} failed: {why}: check [redis] tls_ca_cert, "
                "tls_client_cert, tls_client_key and tls_verify in the config"
            ) from None
        raise RedisUnavailable(
            f"cannot reach Redis at {where} ({type(error).__name__}): is it running?"
        ) from None
    except redis.RedisClusterException as error:  # e.g. `cluster = true` on a plain server
        raise RedisUnavailable(f"Redis at {where} is not a usable cluster: {error}") from None
    remember_cluster_nodes(endpoint, client)  # a reconnect may find the URL's node down
    return client


def refused_by_acl(error: redis.ResponseError, endpoint: Endpoint) -> RedisUnavailable | None:
    """One line for a command the server's ACL refuses this user (NOPERM, or a command inside
    ttsyncd's write script); None for any other error."""
    text = str(error)
    denied = isinstance(error, NoPermissionError) or any(
        sign in text for sign in ("NOPERM", "no permissions", "can't run this command")
    )
    if not denied:
        return None
    # A refusal inside the write script comes wrapped in the pipeline's "Command # 1 (...)".
    reason = text.split("caused error: ", 1)[-1].splitlines()[0] if text else "NOPERM"
    return RedisUnavailable(
        f"Redis at {endpoint.redacted()} refused a command to this user ({reason}): "
        'the README\'s "ACL user" section has the permissions ttsyncd needs'
    )


# What a command meets when Redis goes away after it connected: a node that died, a Cluster
# that lost a slot range (CLUSTERDOWN, a slot with no node), a server too slow to answer. The
# daemon's own list (topology.UNREACHABLE) less OSError: a failed write of the plan file is
# no Redis failure.
LOST_REDIS: Final = tuple(error for error in UNREACHABLE if error is not OSError)


def command_failure(error: Exception, endpoint: Endpoint, command: str) -> TtsyncdError | None:
    """The one line for a Redis error a command met, run here or by the daemon: a command
    the ACL refuses this user, or Redis failing part way; None for any other error. Each
    task's write is guarded and the base is saved only after a whole sync, so what landed is
    found again by the next run: running the command again is all it takes."""
    if isinstance(error, RedisUnavailable):
        return error  # (NotReplicated: it says why itself)
    if isinstance(error, redis.ResponseError):
        refused = refused_by_acl(error, endpoint)
        if refused is not None:
            return refused
    if not isinstance(error, LOST_REDIS):
        return None
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return RedisUnavailable(
        f"Redis at {endpoint.redacted()} failed during the {command} ({reason}): "
        "nothing is lost; run it again once Redis answers"
    )
