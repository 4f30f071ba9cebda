"""The control API: a subset of Toxiproxy's HTTP API (same paths, bodies and answers), plus GET /health.

    GET    /health, GET /version
    GET    /proxies                          {name: proxy, ...}
    POST   /proxies                          {name, listen, upstream, enabled?}      → 201 proxy
    POST   /populate                         [proxy, ...]: create, or replace when listen/upstream differ
    GET    /proxies/{name}                   proxy
    POST   /proxies/{name}                   {enabled?, listen?, upstream?}          → proxy ("enabled": false = down)
    DELETE /proxies/{name}                   → 204
    GET    /proxies/{name}/toxics            [toxic, ...]
    POST   /proxies/{name}/toxics            {type, name?, stream?, toxicity?, attributes}  → toxic
    GET    /proxies/{name}/toxics/{toxic}    toxic
    POST   /proxies/{name}/toxics/{toxic}    {toxicity?, attributes?} (merged)       → toxic
    DELETE /proxies/{name}/toxics/{toxic}    → 204
    POST   /reset                            → 204: every proxy enabled, every toxic removed

A proxy is {"name", "listen", "upstream", "enabled", "toxics": [...]}; a toxic is {"name", "type", "stream",
"toxicity", "attributes"}. Errors are {"error": "<message>", "status": <code>}, as Toxiproxy answers them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .proxy import Proxies, ProxyError
from .toxics import ToxicError

__all__ = ["VERSION", "create_app"]

VERSION = "msa-faultproxy 0.1 (Toxiproxy API subset)"


def create_app(proxies: Proxies) -> Starlette:
    async def body(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ProxyError(f"request body is not valid JSON: {exc}") from None

    async def list_proxies(request: Request) -> Response:
        return JSONResponse({p.name: p.to_json() for p in proxies})

    async def create_proxy(request: Request) -> Response:
        proxy = await proxies.create(await body(request))
        return JSONResponse(proxy.to_json(), status_code=201)

    async def populate(request: Request) -> Response:
        created = await proxies.populate(await body(request))
        return JSONResponse({"proxies": [p.to_json() for p in created]}, status_code=201)

    async def show_proxy(request: Request) -> Response:
        return JSONResponse(proxies.get(request.path_params["proxy"]).to_json())

    async def update_proxy(request: Request) -> Response:
        proxy = await proxies.update(request.path_params["proxy"], await body(request))
        return JSONResponse(proxy.to_json())

    async def delete_proxy(request: Request) -> Response:
        await proxies.delete(request.path_params["proxy"])
        return Response(status_code=204)

    async def list_toxics(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        return JSONResponse([t.to_json() for t in proxy.toxics.values()])

    async def create_toxic(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        return JSONResponse(proxy.add_toxic(await body(request)).to_json())

    async def show_toxic(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        return JSONResponse(proxy.toxic(request.path_params["toxic"]).to_json())

    async def update_toxic(request: Request) -> Response:
        proxy = proxies.get(request.path_params["proxy"])
        return JSONResponse(proxy.update_toxic(request.path_params["toxic"], await body(request)).to_json())

    async def delete_toxic(request: Request) -> Response:
        proxies.get(request.path_params["proxy"]).remove_toxic(request.path_params["toxic"])
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        proxies.reset()
        return Response(status_code=204)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "proxies": len(list(proxies))})

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    async def on_proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return error(exc.status, str(exc))

    async def on_toxic_error(request: Request, exc: Exception) -> Response:
        return error(400, str(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, exc.detail)

    proxy_path, toxic_path = "/proxies/{proxy}", "/proxies/{proxy}/toxics/{toxic}"
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/reset", reset, methods=["POST"]),
        Route("/populate", populate, methods=["POST"]),
        Route("/proxies", list_proxies, methods=["GET"]),
        Route("/proxies", create_proxy, methods=["POST"]),
        Route(proxy_path, show_proxy, methods=["GET"]),
        Route(proxy_path, update_proxy, methods=["POST", "PATCH"]),
        Route(proxy_path, delete_proxy, methods=["DELETE"]),
        Route(proxy_path + "/toxics", list_toxics, methods=["GET"]),
        Route(proxy_path + "/toxics", create_toxic, methods=["POST"]),
        Route(toxic_path, show_toxic, methods=["GET"]),
        Route(toxic_path, update_toxic, methods=["POST", "PATCH"]),
        Route(toxic_path, delete_toxic, methods=["DELETE"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await proxies.close()  # on shutdown every proxied connection ends with us

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ProxyError: on_proxy_error, ToxicError: on_toxic_error, HTTPException: on_http_error},
    )
