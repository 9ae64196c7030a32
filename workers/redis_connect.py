"""One way for every process to reach Redis: one instance, Sentinel (fail-over), or Redis Cluster.

* ``redis://host:port/db`` (or ``rediss://``): one instance, as on a laptop or a managed Redis with its own
  fail-over behind one address.
* ``sentinel://s1:26379;sentinel://s2:26379/db`` plus a master name: the Sentinels are asked where the
  primary is, on every (re)connect, so a fail-over moves the clients with it. The same URL form kombu (the
  Celery broker) takes, so one deployment writes its Sentinels once.
* ``cluster=True`` with a ``redis://`` URL of any node: redis-py's cluster client, which follows ``MOVED``
  redirects. The keys that one step uses together must share a hash tag (docs/operations.md, "Clusters").
  Not for the Celery broker: kombu's Redis transport needs several keys per command.

A client that loses its primary during a fail-over raises (ConnectionError or ReadOnlyError) on that command
and finds the new primary on the next: the callers' existing retries (a task's, the delta consumer's) cover it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from graphdb.errors import InvalidInput

AsyncRedis = aioredis.Redis | AsyncRedisCluster  # what the server's delta consumer and signal take
SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``sentinel://`` URL: where the Sentinels listen, the database, the primary's password."""

    hosts: tuple[tuple[str, int], ...]
    db: int
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SENTINEL_SCHEME


def parse_sentinel(url: str) -> SentinelUrl:
    """``sentinel://[:password@]host[:port][;sentinel://host[:port]...][/db]``: kombu's form (the database and the
    password may sit on any part; the last one given wins)."""
    hosts: list[tuple[str, int]] = []
    db, password = 0, None
    for part in filter(None, (p.strip() for p in url.split(";"))):
        u = urlsplit(part)
        if u.scheme.lower() != SENTINEL_SCHEME or not u.hostname:
            raise InvalidInput(f"Redis Sentinel URL part {part!r}: expected sentinel://host[:port][/db]")
        try:
            port = u.port or SENTINEL_PORT
        except ValueError as exc:
            raise InvalidInput(f"Redis Sentinel URL part {part!r}: {exc}") from None
        hosts.append((u.hostname, port))
        if u.password:
            password = unquote(u.password)
        if u.path.strip("/"):
            try:
                db = int(u.path.strip("/"))
            except ValueError:
                raise InvalidInput(f"Redis Sentinel URL part {part!r}: the database must be a number") from None
    if not hosts:
        raise InvalidInput(f"Redis Sentinel URL {url!r} names no Sentinel")
    return SentinelUrl(tuple(hosts), db, password)


def _check(url: str, master: str, cluster: bool) -> None:
    if is_sentinel(url) and not master:
        raise InvalidInput(f"Redis URL {url!r} names Sentinels but no master name is set (the *_REDIS_SENTINEL_MASTER setting)")
    if is_sentinel(url) and cluster:
        raise InvalidInput("a Redis URL cannot be both Sentinel and Cluster: choose one")


def connect(url: str, *, sentinel_master: str = "", cluster: bool = False, **options: Any) -> redis.Redis | RedisCluster:
    """A blocking client (workers, scheduler, metrics). ``options`` are redis-py's (socket timeouts...)."""
    client: redis.Redis | RedisCluster = _client(url, sentinel_master, cluster, options, Sentinel, RedisCluster, redis.Redis.from_url)
    return client


def connect_async(url: str, *, sentinel_master: str = "", cluster: bool = False, **options: Any) -> AsyncRedis:
    """An asyncio client (the server's delta consumer and its signal), built the same way as `connect`."""
    client: AsyncRedis = _client(url, sentinel_master, cluster, options, AsyncSentinel, AsyncRedisCluster, aioredis.from_url)
    return client


def _client(
    url: str, master: str, cluster: bool, options: dict[str, Any], sentinel_type: Any, cluster_type: Any, from_url: Any
) -> Any:
    """redis-py's blocking and asyncio flavours take the same arguments: one recipe for both."""
    _check(url, master, cluster)
    if is_sentinel(url):
        s = parse_sentinel(url)
        return sentinel_type(list(s.hosts), **_sentinel_options(options)).master_for(master, db=s.db, password=s.password, **options)
    if cluster:
        return cluster_type.from_url(url, **options)
    return from_url(url, **options)


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    # The Sentinels answer at once or not at all: their own connections get the same timeouts, nothing else.
    return {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}


def broker_transport_options(url: str, sentinel_master: str) -> dict[str, str]:
    """What kombu needs beside a Sentinel broker URL (its master name); nothing for a plain one."""
    if not is_sentinel(url):
        return {}
    _check(url, sentinel_master, False)
    return {"master_name": sentinel_master}
