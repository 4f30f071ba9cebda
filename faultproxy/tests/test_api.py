"""The control API: Toxiproxy's shapes, and a clear 4xx JSON error for every kind of bad input (never a 500)."""

from __future__ import annotations

import socket

import httpx
import pytest

from msa_faultproxy.api import create_app
from msa_faultproxy.client import FaultProxyClient, FaultProxyError
from msa_faultproxy.proxy import Proxies


@pytest.fixture
async def http(proxies: Proxies):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(proxies)), base_url="http://fp") as c:
        yield c


async def test_shapes_follow_toxiproxy(fp: FaultProxyClient, echo_proxy, http):
    assert (await http.get("/health")).status_code == 200
    listed = await fp.proxies()
    assert list(listed) == ["echo"]
    assert set(listed["echo"]) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert listed["echo"]["listen"] == f"127.0.0.1:{echo_proxy}"  # port 0 became the port the OS picked

    toxic = await fp.add_toxic("echo", "latency", {"latency": 50})
    assert toxic == {"name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1.0,
                     "attributes": {"latency": 50, "jitter": 0}}
    assert await fp.toxics("echo") == [toxic]
    assert (await http.get("/proxies/echo/toxics/latency_downstream")).json() == toxic
    updated = await fp.update_toxic("echo", "latency_downstream", {"jitter": 5}, toxicity=0.5)
    assert updated["attributes"] == {"latency": 50, "jitter": 5} and updated["toxicity"] == 0.5
    assert (await fp.proxy("echo"))["toxics"] == [updated]

    r = await http.delete("/proxies/echo/toxics/latency_downstream")
    assert r.status_code == 204
    assert (await http.post("/reset")).status_code == 204
    assert (await http.delete("/proxies/echo")).status_code == 204
    assert await fp.proxies() == {}


async def test_populate_creates_and_keeps_matching_proxies(http, echo):
    body = [{"name": "a", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}]
    r = await http.post("/populate", json=body)
    assert r.status_code == 201
    listen = r.json()["proxies"][0]["listen"]
    r = await http.post("/populate", json=[body[0] | {"listen": listen}])  # same fields: kept as it is
    assert r.json()["proxies"][0]["listen"] == listen


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/proxies", b"{not json", 400, "not valid JSON"),
        ("POST", "/proxies", [1], 400, "JSON object"),
        ("POST", "/proxies", {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}, 400, "name"),
        ("POST", "/proxies", {"name": "x", "listen": "nowhere", "upstream": "127.0.0.1:1"}, 400, "listen"),
        ("POST", "/proxies", {"name": "x", "listen": "127.0.0.1:0", "upstream": "h:99999"}, 400, "upstream"),
        ("POST", "/proxies", {"name": "x", "listen": "127.0.0.1:0", "upstream": "h:1", "enabled": "no"}, 400,
         "enabled"),
        ("POST", "/proxies", {"name": "echo", "listen": "127.0.0.1:0", "upstream": "h:1"}, 409, "already exists"),
        ("GET", "/proxies/nope", None, 404, "not found"),
        ("POST", "/proxies/nope", {"enabled": False}, 404, "not found"),
        ("POST", "/proxies/echo", {"enabled": 0}, 400, "enabled"),
        ("POST", "/proxies/echo/toxics", {"type": "gremlins"}, 400, "invalid toxic type"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "stream": "sideways"}, 400, "stream"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "toxicity": 2}, 400, "toxicity"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": {"latncy": 5}}, 400, "latncy"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": {"latency": -1}}, 400, "latency"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": {"latency": "5"}}, 400, "latency"),
        ("POST", "/proxies/echo/toxics", {"type": "bandwidth"}, 400, "rate"),
        ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": []}, 400, "attributes"),
        ("GET", "/proxies/echo/toxics/nope", None, 404, "not found"),
        ("DELETE", "/proxies/echo/toxics/nope", None, 404, "not found"),
        ("POST", "/populate", {"not": "a list"}, 400, "array"),
        ("PUT", "/proxies", {}, 405, "Method Not Allowed"),
        ("GET", "/nothing/here", None, 404, "Not Found"),
    ],
)
async def test_bad_input_is_a_4xx_json_error(http, echo_proxy, method, path, body, status, says):
    content = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) or body is None else body
    r = await http.request(method, path, content=content, json=json_body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["status"] == status and says in r.json()["error"], r.json()


async def test_duplicate_toxic_and_busy_listen_address_are_conflicts(fp: FaultProxyClient, echo_proxy, echo):
    await fp.add_toxic("echo", "latency", {"latency": 1})
    with pytest.raises(FaultProxyError) as info:
        await fp.add_toxic("echo", "latency", {"latency": 2})
    assert info.value.status == 409 and "already exists" in info.value.message

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(FaultProxyError) as info:
            await fp.create_proxy("busy", f"127.0.0.1:{taken.getsockname()[1]}", f"127.0.0.1:{echo.port}")
    assert info.value.status == 409 and "cannot listen" in info.value.message
    assert "busy" not in await fp.proxies()


async def test_scoped_helpers_heal_on_the_way_out(fp: FaultProxyClient, echo_proxy):
    with pytest.raises(RuntimeError):
        async with fp.disabled("echo"):
            assert (await fp.proxy("echo"))["enabled"] is False
            raise RuntimeError("the test body failed")
    assert (await fp.proxy("echo"))["enabled"] is True
    async with fp.toxic("echo", "latency", {"latency": 10}) as toxic:
        assert toxic["name"] == "latency_downstream"
    assert await fp.toxics("echo") == []
