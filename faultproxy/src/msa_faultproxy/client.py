"""An async client for the control API (this proxy's, or a real Toxiproxy's: the calls used here are the same).

    async with FaultProxyClient("http://127.0.0.1:8474") as fp:
        async with fp.disabled("rabbitmq"):            # the broker is "down" for everything behind the proxy
            ...
        async with fp.toxic("rabbitmq", "latency", {"latency": 200}):
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

__all__ = ["FaultProxyClient", "FaultProxyError"]


class FaultProxyError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class FaultProxyClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8474",
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.ASGITransport(create_app(...))
    ):
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture calls to a local control API.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False, transport=transport
        )

    async def __aenter__(self) -> FaultProxyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = await self._http.request(method, path, json=body)
        if r.status_code >= 400:
            try:
                message = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise FaultProxyError(r.status_code, message)
        return r.json() if r.content else None

    # ---- proxies ---------------------------------------------------------------------------------------------

    async def health(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def proxies(self) -> dict[str, dict[str, Any]]:
        return await self._call("GET", "/proxies")

    async def proxy(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"/proxies/{name}")

    async def create_proxy(self, name: str, listen: str, upstream: str, *, enabled: bool = True) -> dict[str, Any]:
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return await self._call("POST", "/proxies", body)

    async def delete_proxy(self, name: str) -> None:
        await self._call("DELETE", f"/proxies/{name}")

    async def disable(self, name: str) -> dict[str, Any]:
        """Take the proxy down: its live connections are closed, new ones are closed on arrival."""
        return await self._call("POST", f"/proxies/{name}", {"enabled": False})

    async def enable(self, name: str) -> dict[str, Any]:
        return await self._call("POST", f"/proxies/{name}", {"enabled": True})

    # ---- toxics ----------------------------------------------------------------------------------------------

    async def toxics(self, name: str) -> list[dict[str, Any]]:
        return await self._call("GET", f"/proxies/{name}/toxics")

    async def add_toxic(
        self,
        name: str,
        type: str,
        attributes: dict[str, float] | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        *,
        toxic_name: str | None = None,
    ) -> dict[str, Any]:
        """Add a toxic to proxy `name`; its name defaults to `<type>_<stream>`. Returns the toxic as stored."""
        body = {"type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes or {}}
        if toxic_name:
            body["name"] = toxic_name
        return await self._call("POST", f"/proxies/{name}/toxics", body)

    async def update_toxic(
        self, name: str, toxic_name: str, attributes: dict[str, float] | None = None, toxicity: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"attributes": attributes or {}}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return await self._call("POST", f"/proxies/{name}/toxics/{toxic_name}", body)

    async def remove_toxic(self, name: str, toxic_name: str) -> None:
        await self._call("DELETE", f"/proxies/{name}/toxics/{toxic_name}")

    async def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        await self._call("POST", "/reset")

    # ---- scoped faults: healed on the way out, even when the block fails -------------------------------------

    @asynccontextmanager
    async def disabled(self, name: str) -> AsyncIterator[None]:
        await self.disable(name)
        try:
            yield
        finally:
            await self.enable(name)

    @asynccontextmanager
    async def toxic(
        self,
        name: str,
        type: str,
        attributes: dict[str, float] | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> AsyncIterator[dict[str, Any]]:
        added = await self.add_toxic(name, type, attributes, stream, toxicity)
        try:
            yield added
        finally:
            await self.remove_toxic(name, added["name"])
