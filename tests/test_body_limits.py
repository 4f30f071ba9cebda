"""A body too large is refused before it is read, with a 413 problem+json naming the limit, by the gateway for the
public routes and by every service instance for what reaches it directly (another service, a learner's curl); the
process goes on serving. Discovery has its own limit, answered in plain text as Consul does (discovery/tests)."""

from __future__ import annotations

import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


@pytest.mark.parametrize("path,limit", [("/api/users", "1048576"), ("/api/auth/token", "1048576"),
                                        ("/api/orders", "32768")])
def test_the_gateway_refuses_a_20_mb_body_to_every_public_route_that_takes_one(stack: Stack, api: Api, path: str,
                                                                              limit: str):
    r = api.http.post(path, content=b"x" * HUGE, headers={**api.auth, "content-type": "application/json"})
    assert_413(r, limit)
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


def test_the_largest_valid_order_fits_the_orders_route_and_more_is_refused(stack: Stack, api: Api):
    """The orders route's limit (32 KiB) is set from the largest order the service accepts: 100 lines of the
    longest SKUs, indented — it gets the service's own answer (422: no such products), not a 413."""
    largest = json.dumps({"items": [{"sku": "S" * 64, "quantity": 1000} for _ in range(100)]}, indent=4).encode()
    r = api.http.post("/api/orders", content=largest, headers={**api.auth, "content-type": "application/json"})
    assert r.status_code != 413 and len(largest) < 32768, r.text[:300]
    r = api.http.post("/api/orders", content=b" " * 32769 + largest, headers={**api.auth,
                                                                            "content-type": "application/json"})
    assert_413(r, "32768")


def slow_loris(url: str, path: str) -> tuple[float, bytes, bool]:
    """A body announced as 100 bytes and sent a byte a second: how long until the answer, the answer, and whether
    the connection was closed after it."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parsed.host}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n".encode())
        started = time.monotonic()
        sock.settimeout(1.0)
        answer = b""
        for _ in range(40):  # bounded: 40 s at most
            try:
                sock.sendall(b" ")
                got = sock.recv(65536)
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not got:
                break
            answer += got
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
        waited = time.monotonic() - started
        sock.settimeout(5.0)
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            closed = isinstance(sys.exc_info()[1], ConnectionResetError)
    return waited, answer, closed


def test_a_slow_loris_body_is_cut_at_the_body_time_out(stack: Stack, api: Api):
    """At the gateway (gateway.body_timeout_s) and at a service reached directly (http.body_timeout_s): 10 s."""
    with ThreadPoolExecutor(2) as pool:
        through_gateway = pool.submit(slow_loris, stack.gateway, "/api/users")
        direct = pool.submit(slow_loris, stack.topology.url("user-1"), "/users")
        for waited, answer, closed in (through_gateway.result(), direct.result()):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer[:300]
            assert b"application/problem+json" in head.lower() and b"not received whole within 10 s" in body
            assert 9.5 < waited < 15 and closed
    assert api.place([{"sku": "STICKER-CB", "quantity": 1}]).status_code == 201  # and both go on serving
