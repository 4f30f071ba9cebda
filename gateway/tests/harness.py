"""The gateway's proxy in-process, in front of fake upstreams: tiny functions behind the kit's real guards
(bulkhead, breaker, balancer) and a stand-in for the lean client that hands each request, as an httpx.Request, to
the function of its port; and a real RSA key pair behind a fake JWKS. (libs/msa_kit/tests/test_http1.py tests the
real client.)"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from msa_gateway.app import GatewaySection, compile_config
from msa_kit.tokens import ISSUER, JwksVerifier
from msa_kit.http1 import Body, Headers
from msa_gateway.proxy import Proxy
from msa_gateway.ratelimit import Buckets, MemoryBuckets
from msa_gateway.routes import RouteSpec
from msa_gateway.upstream import Upstreams as UpstreamRouter
from msa_kit.discovery import Instance
from msa_kit.resilience import BalancingTransport, BreakerPolicy, BreakerTransport, Policies, ResilientStack

Handler = Callable[[httpx.Request], Any]


class FakeDiscovery:
    def __init__(self, services: dict[str, list[Instance]]) -> None:
        self.services = services
        self.watchers: dict[str, object] = {}  # Discovery's registry watchers: none, the fake answers itself

    async def instances(self, service: str) -> list[Instance]:
        return self.services.get(service, [])


class Keys:
    """An RSA signing key like the user service's, and tokens made with it (or forged)."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**public_jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def token(self, sub: str = "u-1", name: str = "ada", roles: list[str] | None = None, ttl: float = 300,
              **overrides: Any) -> str:
        now = int(time.time())
        claims = {"sub": sub, "name": name, "roles": roles or ["user"], "iss": ISSUER, "iat": now,
                  "exp": now + ttl, **overrides}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


def echo(request: httpx.Request) -> httpx.Response:
    """The default upstream: says what it received."""
    return httpx.Response(200, json={
        "instance": request.url.port, "method": request.method, "path": request.url.path,
        "query": request.url.query.decode(), "headers": dict(request.headers), "body": request.content.decode()})


@dataclass
class Upstreams:
    """Instances by port; each answers through its handler (default: echo)."""

    handlers: dict[int, Handler] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 0
        self.calls.append(port)
        if request.url.path == "/.well-known/jwks.json" and port == 9100:
            return httpx.Response(200, json={"keys": self.jwks})
        handler = self.handlers.get(port, echo)
        await request.aread()
        response = handler(request)
        if asyncio.iscoroutine(response):
            response = await response
        return response

    jwks: list[dict[str, Any]] = field(default_factory=list)


class MockResponse:
    """An httpx.Response as the proxy sees an upstream's answer (msa_kit.http1.Response)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response, self.status_code, self.instance = response, response.status_code, ""
        self.headers = [(n.lower(), v) for n, v in response.headers.raw]

    def whole_body(self) -> bytes | None:
        return None  # always streamed: the harder path

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.stream:  # type: ignore[union-attr]
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        await self.response.stream.aclose()  # type: ignore[union-attr]


class MockClient:
    """msa_kit.http1.Pool's interface, answering through `handler` (an httpx.Request in, an httpx.Response out)."""

    def __init__(self, handler: Callable[[httpx.Request], Any]) -> None:
        self.handler = handler

    async def request(self, host: str, port: int, method: bytes, target: bytes, headers: Headers, body: Body, *,
                      timeout: float | None, connect_timeout: float | None, tls: bool = False) -> MockResponse:
        request = httpx.Request(method.decode(), f"{'https' if tls else 'http'}://{host}:{port}{target.decode()}",
                                headers=[(b"host", f"{host}:{port}".encode()), *headers], content=body,
                                extensions={"timeout": {"read": timeout, "connect": connect_timeout}})
        response = await self.handler(request)
        return MockResponse(response)

    async def aclose(self) -> None:
        pass


def instance(service: str, port: int, version: str = "v1") -> Instance:
    return Instance(f"{service}-{port}", "127.0.0.1", port, meta={"version": version})


DEFAULT_INSTANCES = {"user": [instance("user", 9100)], "catalog": [instance("catalog", 9201), instance("catalog", 9202)],
                     "order": [instance("order", 9301)]}


class Harness:
    def __init__(self, routes: list[dict[str, Any]], *, instances: dict[str, list[Instance]] | None = None,
                 buckets: Buckets | None = None, breaker: BreakerPolicy | None = None, **section: Any) -> None:
        self.keys = Keys()
        self.upstreams = Upstreams(jwks=[self.keys.jwk])
        self.discovery = FakeDiscovery(dict(DEFAULT_INSTANCES if instances is None else instances))
        mock = httpx.MockTransport(self.upstreams)
        policy = lambda _s: breaker or BreakerPolicy(fail_max=100, reset_timeout_s=60)  # noqa: E731
        # platform.http's stack, for the JWKS; the proxy's: the kit's guards around the stand-in client.
        jwks = BreakerTransport(BalancingTransport(self.discovery, mock), policy)  # type: ignore[arg-type]
        self.http = httpx.AsyncClient(transport=jwks, timeout=2.0)
        self.stack = ResilientStack(self.discovery, Policies(breaker=policy))  # type: ignore[arg-type]
        self.upstream_client = MockClient(self.upstreams)
        self.direct = BreakerTransport(mock, lambda _s: BreakerPolicy())
        self.section = GatewaySection(routes=[RouteSpec.model_validate(r) for r in routes], **section)
        self.proxy = Proxy(compile_config(self.section), UpstreamRouter(self.stack, self.direct, self.upstream_client),
                           JwksVerifier(self.http), buckets or MemoryBuckets(), lambda: httpx.Timeout(2.0))
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.proxy, client=("10.0.0.7", 5555)),
                                        base_url="http://gw.test")

    def reconfigure(self, routes: list[dict[str, Any]], **section: Any) -> None:
        self.section = GatewaySection(routes=[RouteSpec.model_validate(r) for r in routes], **section)
        self.proxy.config = compile_config(self.section)

    def bearer(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.token(**claims)}"}

    async def close(self) -> None:
        await self.client.aclose()
        await self.http.aclose()
