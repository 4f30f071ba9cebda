"""Where the proxy's requests go: a service, through the kit's guards (bulkhead → breaker → balancer with outlier
ejection, over the discovery cache), or a fixed URL, through a breaker; either way over the lean client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, TypeVar

import httpx

from msa_kit.discovery import Instance
from msa_kit.http1 import Body, Client, Headers, Response


R = TypeVar("R", bound=Response)


class Stack(Protocol):  # msa_kit.resilience.ResilientStack
    async def call(self, service: str, send: Callable[[Instance], Awaitable[R]], *,
                   weights: dict[str, int] | None = None, timeout: float | None = None) -> R: ...


class Breakers(Protocol):  # msa_kit.resilience.BreakerTransport
    async def guard(self, service: str, call: Callable[[], Awaitable[R]]) -> R: ...


@dataclass(frozen=True, slots=True)
class FixedTarget:
    """A route's `url`, parsed once per configuration."""

    host: str
    port: int
    tls: bool
    path: str  # prefix of every forwarded path ("" for none)
    label: str  # what the access log and errors name

    @classmethod
    def parse(cls, url: str) -> "FixedTarget":
        u = httpx.URL(url)
        tls = u.scheme == "https"
        return cls(u.host, u.port or (443 if tls else 80), tls, u.path.rstrip("/"), url)


class Upstreams:
    def __init__(self, stack: Stack, direct: Breakers, client: Client) -> None:
        self.stack, self.direct, self.client = stack, direct, client

    async def service(self, service: str, method: bytes, target: bytes, headers: Headers, body: Body, *,
                      weights: dict[str, int] | None, timeout: httpx.Timeout) -> Response:
        client, read, connect = self.client, timeout.read, timeout.connect

        async def send(instance: Instance) -> Response:
            response = await client.request(instance.address, instance.port, method, target, headers, body,
                                            timeout=read, connect_timeout=connect)
            response.instance = instance.id
            return response

        # The client times each attempt out after `read`, from the first byte sent to the answer's headers (its
        # ReadTimeout is what the balancer reports as UpstreamTimeout): the balancer needs no timer of its own.
        return await self.stack.call(service, send, weights=weights, timeout=None)

    async def fixed(self, to: FixedTarget, method: bytes, target: bytes, headers: Headers, body: Body, *,
                    timeout: httpx.Timeout) -> Response:
        client, read = self.client, timeout.read

        async def call() -> Response:
            response = await client.request(to.host, to.port, method, to.path.encode() + target, headers, body,
                                            timeout=read, connect_timeout=timeout.connect, tls=to.tls)
            response.instance = to.label
            return response

        return await self.direct.guard(to.host, call)

    async def aclose(self) -> None:
        await self.client.aclose()
