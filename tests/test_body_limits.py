"""A body too large is refused before it is read, with a 413 problem+json naming the limit, by the gateway for the
public routes and by every service instance for what reaches it directly (another service, a learner's curl); the
process goes on serving. Discovery has its own limit, answered in plain text as Consul does (discovery/tests)."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from support import Api, Stack

pytestmark = pytest.mark.integration

HUGE = 20_000_000


def assert_413(r: httpx.Response, limit: str) -> None:
    assert r.status_code == 413, r.text[:300]
    assert r.headers["content-type"] == "application/problem+json"
    assert f"limited to {limit} bytes" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/api/users", "/api/auth/token", "/api/orders"])
def test_the_gateway_refuses_a_20_mb_body_to_every_public_route_that_takes_one(stack: Stack, api: Api, path: str):
    r = api.http.post(path, content=b"x" * HUGE, headers={**api.auth, "content-type": "application/json"})
    assert_413(r, "1048576")
    assert api.place([{"sku": "STICKER-CB", "quantity": 1}]).status_code == 201


@pytest.mark.parametrize("program,path", [("user-1", "/users"), ("order-1", "/orders"), ("catalog-1", "/admin/faults")])
def test_each_service_refuses_a_body_over_its_limit_by_length_and_chunked(stack: Stack, program: str, path: str):
    base = stack.topology.url(program)
    with httpx.Client(base_url=base, timeout=20) as c:
        assert_413(c.post(path, content=b"x" * HUGE, headers={"content-type": "application/json"}), "1048576")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(40):
                yield b"y" * 100_000

        assert_413(c.post(path, content=chunks(), headers={"content-type": "application/json"}), "1048576")

        def small() -> Iterator[bytes]:  # a chunked body within the limit still reaches the route whole
            yield b'{"username": '
            yield b'"x"}'

        r = c.post(path, content=small(), headers={"content-type": "application/json"})
        assert r.status_code in (401, 409, 422), r.text  # the route's own answer, not the limit's
        assert c.get("/health").status_code == 200


def test_the_config_server_refuses_a_20_mb_body(stack: Stack):
    with httpx.Client(base_url=stack.config_server, timeout=20) as c:
        assert_413(c.post("/encrypt", content=b"x" * HUGE, headers={"content-type": "text/plain"}), "1048576")
        assert c.get("/health").status_code == 200
