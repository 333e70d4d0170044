"""ResponseCache: accepted answers kept in litellm's caching layer (`cache = true`; docs/data.md).

A DiskCache in a folder (litellm's on 1.106; on 1.110, which removed it, `DiskBackend`:
diskcache, storing the same values), or Redis for `cache_url = "redis://..."` (keys under
"batchrun:"). The key is litellm's cache key of the request as sent, with the
api_base; batchrun reads and writes it around its own calls, so an error or a
rejected answer is never stored, and litellm's automatic caching stays off.

A disk store that cannot be read (a damaged SQLite file: "file is not a
database", "database disk image is malformed") is `unreadable_cache` before a
run (the launcher then runs without the cache, saying so in one line), and if
it turns unreadable during a run, the first failure says so in one line and
the cache is off for the rest of that run. The damaged file is left as it is.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, TypedDict

from batchrun.errors import (
    ConfigurationError,
    redact_secrets,
)
from batchrun.providers.litellm_setup import import_litellm
from batchrun.records import Completion, ToolCall, Usage

#: litellm's callback lists that `litellm.caching.Cache()` adds "cache" to (see ResponseCache).
_CACHE_CALLBACK_LISTS = ("input_callback", "success_callback", "_async_success_callback")
CACHE_NAMESPACE = "batchrun"  # Redis keys are "batchrun:<hash>"


class CachedAnswer(TypedDict):
    """What ResponseCache stores of an accepted answer (JSON under "response"), version `v`."""

    v: int
    text: str
    finish_reason: str | None
    model: str | None
    usage: dict[str, int | None] | None  # Usage.as_dict()
    usage_source: str
    cost_usd: float | None  # what it cost when it was obtained
    cost_status: str
    tool_calls: list[tuple[str, str, str | None]]  # (name, arguments, id); JSON arrays once read back


class ResponseCache:
    """Accepted answers in litellm's cache layer (module docstring, "The response cache").

    `location` is {"dir": folder} (litellm's DiskCache) or {"url": "redis://..."}
    (litellm's RedisCache), with an optional "endpoint" that names the server
    in keys instead of the api_base. Reading or writing never raises: a backend error
    is logged and counts as a miss (the request is then sent and paid for)."""

    VERSION = 1  # of the stored payload
    #: litellm's RedisCache or DiskCache: their clients (redis_client, disk_cache) are not on its BaseCache
    backend: Any

    def __init__(self, location: Mapping[str, str]) -> None:
        litellm = import_litellm()
        from litellm.caching.caching import Cache
        from litellm.types.caching import LiteLLMCacheType

        self.location = dict(location)
        before = {name: list(getattr(litellm, name, None) or []) for name in _CACHE_CALLBACK_LISTS}
        try:
            if location.get("url"):
                self._cache = Cache(type=LiteLLMCacheType.REDIS, url=location["url"], namespace=CACHE_NAMESPACE)
                self.backend = self._cache.cache
                self._ping()
            else:
                os.makedirs(location["dir"], exist_ok=True)
                disk = getattr(LiteLLMCacheType, "DISK", None)  # litellm 1.110 removed its disk backend
                if disk is not None:
                    self._cache = Cache(type=disk, disk_cache_dir=location["dir"])
                    self.backend = self._cache.cache
                else:
                    self._cache = Cache(type=LiteLLMCacheType.LOCAL)  # for its cache key only
                    self.backend = DiskBackend(location["dir"])
        except ModuleNotFoundError as exc:
            extra = "redis" if location.get("url") else "cache"
            raise ConfigurationError(f"the response cache needs {exc.name or 'a module'}: "
                                     f"pip install 'batchrun[{extra}]'") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot open the response cache in {location.get('dir')}: "
                                     f"{exc.strerror}") from None
        except Exception as exc:  # sqlite3.DatabaseError from diskcache: a damaged store
            if not _damaged(exc):
                raise
            raise UnreadableCacheError(_unreadable(location, exc)) from None
        finally:  # batchrun reads and writes the cache itself: litellm's per-call "cache" callbacks stay off
            for name, kept in before.items():
                current = getattr(litellm, name, None)
                if isinstance(current, list):
                    current[:] = kept
        self.broken = False  # the store turned unreadable during the run: off from then on

    def probe(self) -> None:
        """Read the store once (UnreadableCacheError when it cannot be read)."""
        if self.location.get("url"):
            return
        try:
            self.backend.disk_cache.get("batchrun-probe")
            len(self.backend.disk_cache)
        except Exception as exc:
            if not _damaged(exc):
                raise
            raise UnreadableCacheError(_unreadable(self.location, exc)) from None

    def _failed(self, what: str, exc: Exception) -> None:
        if _damaged(exc):
            if not self.broken:
                self.broken = True
                import logging

                logging.getLogger("batchrun").warning(
                    "%s: the rest of this run goes on without it", _unreadable(self.location, exc))
            return
        log_cache_failure(what, exc)

    def _ping(self) -> None:
        from batchrun.errors import redact_url

        try:
            self.backend.redis_client.ping()
        except Exception as exc:
            raise ConfigurationError(f"the response cache at {redact_url(self.location['url'])} does not "
                                     f"answer: {type(exc).__name__}: {redact_secrets(str(exc), ())}") from None

    def key(self, call: Mapping[str, object], api_base: str | None) -> str:
        """litellm's cache key of the request as sent, hashed with the endpoint (the location's
        "endpoint" when set: "simulator" for the embedded simulator, whose port changes)."""
        import hashlib

        api_base = self.location.get("endpoint") or api_base
        base = self._cache.get_cache_key(**dict(call))
        base = base.split(":", 1)[1] if base.startswith(CACHE_NAMESPACE + ":") else base
        return hashlib.sha256(f"{base}\0{api_base or ''}".encode()).hexdigest()

    async def get(self, key: str) -> Completion | None:
        if self.broken:
            return None
        try:
            raw = await self.backend.async_get_cache(key)
        except Exception as exc:  # a miss: the request is sent
            self._failed("read", exc)
            return None
        value = raw.get("response") if isinstance(raw, dict) and "response" in raw else raw
        try:
            if isinstance(value, (str, bytes)):
                import orjson

                value = orjson.loads(value)
            return completion_from_cache(value)
        except Exception:  # not batchrun's payload (another version, damaged): a miss
            return None

    async def put(self, key: str, completion: Completion) -> None:
        import orjson

        if self.broken:
            return
        payload: CachedAnswer = {
            "v": self.VERSION, "text": completion.text, "finish_reason": completion.finish_reason,
            "model": completion.model, "usage": completion.usage.as_dict() if completion.usage else None,
            "usage_source": completion.usage_source, "cost_usd": completion.cost_usd,
            "cost_status": completion.cost_status,
            "tool_calls": [(call.name, call.arguments, call.id) for call in completion.tool_calls],
        }
        try:
            await self.backend.async_set_cache(key, {"timestamp": time.time(),
                                                     "response": orjson.dumps(payload).decode()})
        except Exception as exc:
            self._failed("write", exc)

    def clear(self) -> int:
        """Remove every answer batchrun stored here; returns how many (Redis: only "batchrun:" keys)."""
        if isinstance(self.location.get("url"), str):
            client = self.backend.redis_client
            removed = 0
            for found in client.scan_iter(match=f"{CACHE_NAMESPACE}:*", count=1000):
                removed += int(client.delete(found))
            return removed
        disk = self.backend.disk_cache
        count = len(disk)
        disk.clear()
        return count

    def __len__(self) -> int:
        if isinstance(self.location.get("url"), str):
            return sum(1 for _ in self.backend.redis_client.scan_iter(match=f"{CACHE_NAMESPACE}:*", count=1000))
        return len(self.backend.disk_cache)

    async def aclose(self) -> None:
        try:
            if isinstance(self.location.get("url"), str):
                await self.backend.disconnect()
            else:
                self.backend.disk_cache.close()
        except Exception:  # closing is best effort
            pass


class DiskBackend:
    """The disk backend litellm 1.106 has and 1.110 removed (its DiskCache): diskcache in a folder,
    values stored as litellm's DiskCache stored them, so a folder written by either one reads back."""

    def __init__(self, directory: str) -> None:
        import diskcache

        self.disk_cache = diskcache.Cache(directory)

    async def async_get_cache(self, key: str) -> object:
        return self.disk_cache.get(key)

    async def async_set_cache(self, key: str, value: object) -> None:
        self.disk_cache.set(key, value)


class UnreadableCacheError(ConfigurationError):
    """The disk store of the response cache cannot be read (module docstring)."""


def _damaged(exc: BaseException) -> bool:
    """A damaged SQLite store (sqlite3.DatabaseError and its subclasses but a locked database)."""
    import sqlite3

    return isinstance(exc, sqlite3.DatabaseError) and "locked" not in str(exc)


def _unreadable(location: Mapping[str, str], exc: BaseException) -> str:
    return (f"the response cache in {location.get('dir')} cannot be read ({type(exc).__name__}: "
            f"{redact_secrets(str(exc), ())}); move that folder aside or delete it for a fresh cache")


def unreadable_cache(location: Mapping[str, str] | None) -> str | None:
    """Why a disk cache cannot be used (one line), or None when it can (or is not on disk).
    Opening it creates the folder, as a run would."""
    if not location or location.get("url"):
        return None
    try:
        cache = ResponseCache(location)
    except UnreadableCacheError as exc:
        return str(exc)
    try:
        cache.probe()
    except UnreadableCacheError as exc:
        return str(exc)
    finally:
        try:
            cache.backend.disk_cache.close()
        except Exception:
            pass
    return None


def log_cache_failure(what: str, exc: Exception) -> None:
    import logging

    logging.getLogger("batchrun").warning("response cache %s failed (treated as a miss): %s: %s", what,
                                          type(exc).__name__, redact_secrets(str(exc), ()))


def completion_from_cache(value: object) -> Completion:
    """A stored payload (CachedAnswer) as a cache hit: cost 0 now, what it cost then in cost_saved_usd;
    ValueError (or another exception) for anything else."""
    if not isinstance(value, Mapping) or value.get("v") != ResponseCache.VERSION:
        raise ValueError("not a batchrun cache payload")
    usage = value.get("usage")
    return Completion(
        text=str(value["text"]), finish_reason=value.get("finish_reason"), model=value.get("model"),
        usage=Usage.from_dict(usage) if usage else None, cost_usd=0.0, cost_status="cache_hit", cost_source="cache",
        tool_calls=tuple(ToolCall(name, arguments, call_id) for name, arguments, call_id in value.get("tool_calls") or ()),
        usage_source=value.get("usage_source") or "provider", cache_hit=True,
        cost_saved_usd=value.get("cost_usd"),
    )
