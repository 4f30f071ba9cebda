"""Toxics: the faults a proxy applies to the bytes that pass through it (Toxiproxy's model and names).

A proxied connection has two streams: `upstream` (client → server) and `downstream` (server → client). Every chunk
read from one side goes through the toxics of its stream, in the order they were added, and then out to the other
side. Each toxic is one stage of that chain: it receives a chunk and decides what it passes on to the next stage
(`send`), and when — later (latency), in slices at a pace (bandwidth), or never (timeout).

Some faults are about the connection rather than its bytes: `timeout` closes it and `reset_peer` resets it after a
while, whether data flows or not. Those toxics also have `start(connection)`, run once for every connection they
affect, from the moment both exist.

`toxicity` is the probability that a toxic affects a connection, decided once per connection (as in Toxiproxy).
"Down" is not a toxic: it is the proxy's `enabled` flag (see proxy.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

__all__ = [
    "Bandwidth", "Latency", "ResetPeer", "STREAMS", "TOXIC_TYPES", "Timeout", "Toxic", "ToxicError", "parse_toxic",
]

STREAMS = ("upstream", "downstream")

Send = Callable[[bytes], Awaitable[None]]


class ToxicError(ValueError):
    """Bad toxic definition; str(error) says which field and why."""


class Connection(Protocol):  # what a connection-level toxic needs from proxy.Connection
    def close(self, *, reset: bool = False) -> None: ...


@dataclass(eq=False)  # compared and hashed by identity: a connection remembers its dice roll per toxic object
class Toxic:
    type: ClassVar[str]
    attribute_defaults: ClassVar[dict[str, float]]

    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attributes = self.attribute_defaults | self.attributes

    async def pipe(self, data: bytes, arrived: float, state: dict[str, Any], send: Send) -> None:
        """Pass a chunk (read at loop time `arrived`) on to the next stage. `state` is this toxic's own scratch
        space on this stream of this connection. The default passes it on unchanged."""
        await send(data)

    async def start(self, connection: Connection) -> None:
        """Run for each affected connection while both exist (cancelled when the toxic is removed)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


class Latency(Toxic):
    """Hold every chunk until `latency` ± `jitter` ms after it arrived. Chunks keep their order and are delayed,
    not queued one behind the other: a stream's throughput stays the same, only later."""

    type = "latency"
    attribute_defaults = {"latency": 0, "jitter": 0}

    async def pipe(self, data, arrived, state, send):
        delay = self.attributes["latency"] + random.uniform(-1, 1) * self.attributes["jitter"]
        await _sleep_until(arrived + max(0.0, delay) / 1000)
        await send(data)


class Bandwidth(Toxic):
    """Let at most `rate` KB/s (1 KB = 1000 bytes) through, in slices of ~50 ms worth of data."""

    type = "bandwidth"
    attribute_defaults = {"rate": 0}

    async def pipe(self, data, arrived, state, send):
        bytes_per_s = self.attributes["rate"] * 1000
        slice_size = max(1, int(bytes_per_s / 20))
        loop = asyncio.get_running_loop()
        for i in range(0, len(data), slice_size):
            piece = data[i : i + slice_size]
            # The stream may send this slice once the previous ones have had their time on the wire.
            due = max(loop.time(), state.get("free_at", 0.0))
            state["free_at"] = due + len(piece) / bytes_per_s
            await _sleep_until(due)
            await send(piece)


class Timeout(Toxic):
    """Let nothing through, and close the connection after `timeout` ms; with 0 it stays open, silent, until the
    toxic is removed. (What a client sees when a server hangs, or a firewall starts dropping packets.)"""

    type = "timeout"
    attribute_defaults = {"timeout": 0}

    async def pipe(self, data, arrived, state, send):
        return  # dropped

    async def start(self, connection):
        if self.attributes["timeout"] > 0:
            await asyncio.sleep(self.attributes["timeout"] / 1000)
            connection.close()


class ResetPeer(Toxic):
    """Reset the connection (TCP RST: "connection reset by peer") after `timeout` ms, or at once with 0."""

    type = "reset_peer"
    attribute_defaults = {"timeout": 0}

    async def start(self, connection):
        await asyncio.sleep(self.attributes["timeout"] / 1000)
        connection.close(reset=True)


TOXIC_TYPES: dict[str, type[Toxic]] = {t.type: t for t in (Latency, Bandwidth, Timeout, ResetPeer)}


def parse_toxic(body: Any, *, existing: Toxic | None = None) -> Toxic:
    """A Toxic from the API's JSON (`{"name", "type", "stream", "toxicity", "attributes"}`), or ToxicError.

    With `existing`, an update: `type` and `stream` stay as they are (as in Toxiproxy), the given attributes are
    merged over the current ones and the result is a new Toxic object (so connections roll its toxicity anew).
    """
    if not isinstance(body, dict):
        raise ToxicError("a toxic is a JSON object")
    if existing is not None:
        kind, stream, name = type(existing), existing.stream, existing.name
    else:
        type_name = body.get("type")
        if type_name not in TOXIC_TYPES:
            raise ToxicError(f"invalid toxic type {type_name!r}; known: {', '.join(TOXIC_TYPES)}")
        kind = TOXIC_TYPES[type_name]
        stream = body.get("stream") or "downstream"
        if stream not in STREAMS:
            raise ToxicError(f"stream must be 'upstream' or 'downstream', not {stream!r}")
        name = body.get("name") or f"{kind.type}_{stream}"
        if not isinstance(name, str):
            raise ToxicError("name must be a string")

    toxicity = body.get("toxicity", existing.toxicity if existing else 1.0)
    if isinstance(toxicity, bool) or not isinstance(toxicity, (int, float)) or not 0 <= toxicity <= 1:
        raise ToxicError(f"toxicity must be a number from 0 to 1, not {toxicity!r}")

    given = body.get("attributes")
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ToxicError("attributes must be a JSON object")
    attributes = dict(existing.attributes) if existing else {}
    for key, value in given.items():
        if key not in kind.attribute_defaults:
            raise ToxicError(
                f"unknown attribute {key!r} for {kind.type}; it takes: {', '.join(kind.attribute_defaults)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ToxicError(f"attribute {key!r} must be a number ≥ 0, not {value!r}")
        attributes[key] = value
    if kind is Bandwidth and attributes.get("rate", 0) <= 0:
        raise ToxicError("bandwidth needs attributes.rate > 0 (KB/s)")
    return kind(name=name, stream=stream, toxicity=float(toxicity), attributes=attributes)


async def _sleep_until(when: float) -> None:
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
