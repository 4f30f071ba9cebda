"""One OpenAPI document for the whole public API: every service's own /openapi.json, each path moved under the
public prefix the route table gives it, with the gateway's auth and errors described.

An operation appears only if the route table would route its public path and method to that service (so
internal endpoints stay out unless a route exposes them), and component names are prefixed by service, since
every FastAPI service has its own `HTTPValidationError`.
"""

from __future__ import annotations

import asyncio
import copy
import html
import logging
import time
from importlib import resources
from typing import Any

import httpx
from pydantic import BaseModel

from msa_kit.problems import PROBLEM_JSON

from .routes import Route, RouteTable

log = logging.getLogger(__name__)

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BODY_METHODS = {"post", "put", "patch"}


class DocsSection(BaseModel):
    title: str = "msa-sandbox API"
    exclude_tags: list[str] = ["operations", "admin"]  # every service's /health, /ready, /admin/...: not the API
    cache_s: float = 10.0


PROBLEM_SCHEMA = {
    "type": "object", "title": "Problem",
    "description": "RFC 9457 problem details; every error the gateway produces has this shape.",
    "required": ["type", "title", "status"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"}, "trace_id": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object", "properties": {
                       "field": {"type": "string"}, "message": {"type": "string"}}}}},
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _prefix_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/components/schemas/", f"#/components/schemas/{prefix}")
                    if k == "$ref" and isinstance(v, str) else _prefix_refs(v, prefix)) for k, v in node.items()}
    if isinstance(node, list):
        return [_prefix_refs(v, prefix) for v in node]
    return node


def aggregate(table: RouteTable, specs: dict[str, dict[str, Any]], section: DocsSection,
              unavailable: dict[str, str] | None = None) -> dict[str, Any]:
    """`specs`: target (service name or fixed URL) → its OpenAPI document."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": section.title, "version": "1",
                 "description": "Every service's API, as the gateway exposes it. Authorize with a token from "
                                "POST /api/auth/token."},
        "paths": {},
        "components": {"schemas": {"Problem": PROBLEM_SCHEMA},
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
    if unavailable:
        doc["info"]["x-unavailable"] = unavailable
    excluded = set(section.exclude_tags)
    for target, spec in sorted(specs.items()):
        prefix = "".join(p.capitalize() for p in target.replace("/", "_").replace(":", "_").split("_") if p.isalnum())
        prefix = prefix + "_"
        spec = _prefix_refs(spec, prefix)
        for name, schema in spec.get("components", {}).get("schemas", {}).items():
            doc["components"]["schemas"][prefix + name] = schema
        routes = [r for r in table.routes if r.target == target]
        for upstream_path, item in spec.get("paths", {}).items():
            for method, op in item.items():
                if method not in METHODS or excluded.intersection(op.get("tags", [])):
                    continue
                route, public = _exposing(table, routes, method.upper(), upstream_path)
                if route is None or public is None:
                    continue
                op = copy.deepcopy(op)
                op["operationId"] = f"{route.id}_{op.get('operationId', method + upstream_path)}"
                _describe_gateway(op, route, method)
                doc["paths"].setdefault(public, {})[method] = op
    return doc


def _exposing(table: RouteTable, routes: list[Route], method: str, upstream: str) -> tuple[Route | None, str | None]:
    for route in routes:
        public = route.public_path(upstream)
        if public is not None and table.match(method, public) is route and route.upstream_path(public) == upstream:
            return route, public
    return None, None


def _describe_gateway(op: dict[str, Any], route: Route, method: str) -> None:
    responses = op.setdefault("responses", {})
    # FastAPI documents its validation errors as HTTPValidationError JSON; the kit answers them as problem+json
    # (msa_kit.app.install_problem_handlers). Document what a client really receives.
    for status, response in list(responses.items()):
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        if str(schema.get("$ref", "")).endswith("_HTTPValidationError"):
            responses[status] = _problem_response(response.get("description") or "Invalid request")
    # The service's own notion of the caller comes from identity headers the gateway sets; a client cannot.
    op["parameters"] = [p for p in op.get("parameters", [])
                        if not (p.get("in") == "header" and p.get("name", "").lower() in
                                ("x-user-id", "x-user-name", "x-user-roles"))]
    if not op["parameters"]:
        del op["parameters"]
    if route.auth:
        op["security"] = [{"bearerAuth": []}]
        responses.setdefault("401", _problem_response("No valid bearer token"))
        if route.roles:
            responses.setdefault("403", _problem_response(f"Needs one of the roles {sorted(route.roles)}"))
    if method in BODY_METHODS:
        responses.setdefault("413", _problem_response("Body over the gateway's limit"))
    if route.limit is not None:
        responses.setdefault("429", _problem_response(f"Rate limit of route {route.id}"))
    responses.setdefault("502", _problem_response("The upstream failed"))
    responses.setdefault("503", _problem_response("No instance available, or its circuit breaker is open"))
    responses.setdefault("504", _problem_response("The upstream did not answer in time"))


class DocsCache:
    """Fetches every target's OpenAPI concurrently, at most every `cache_s`; a target that does not answer is
    listed under info.x-unavailable instead of failing the whole document."""

    def __init__(self, http: httpx.AsyncClient, direct: httpx.AsyncClient) -> None:
        self.http, self.direct = http, direct
        self._doc: dict[str, Any] | None = None
        self._at = 0.0
        self._key: object = None
        self._lock = asyncio.Lock()

    async def document(self, table: RouteTable, section: DocsSection) -> dict[str, Any]:
        async with self._lock:
            if self._doc is not None and self._key is table and time.monotonic() - self._at < section.cache_s:
                return self._doc
            targets = sorted({(r.target, r.service is not None) for r in table.routes})
            results = await asyncio.gather(*(self._fetch(t, svc) for t, svc in targets), return_exceptions=True)
            specs, unavailable = {}, {}
            for (target, _), result in zip(targets, results):
                if isinstance(result, BaseException):
                    unavailable[target] = str(result) or type(result).__name__
                else:
                    specs[target] = result
            self._doc, self._at, self._key = aggregate(table, specs, section, unavailable), time.monotonic(), table
            return self._doc

    async def _fetch(self, target: str, is_service: bool) -> dict[str, Any]:
        url = f"http://{target}/openapi.json" if is_service else f"{target.rstrip('/')}/openapi.json"
        r = await (self.http if is_service else self.direct).get(url, timeout=2.0)
        r.raise_for_status()
        return r.json()


# ---- the page: Swagger UI from this origin (fastapi-offline's copy), so the strict CSP holds and no CDN is asked ---

SWAGGER_FILES = {"/docs/swagger-ui-bundle.js": (resources.files("fastapi_offline") / "static/swagger-ui-bundle.js",
                                                "text/javascript"),
                 "/docs/swagger-ui.css": (resources.files("fastapi_offline") / "static/swagger-ui.css", "text/css"),
                 "/docs/docs.js": (resources.files("msa_gateway") / "static/docs.js", "text/javascript")}


def docs_page(title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{html.escape(title)}</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <script src="/docs/swagger-ui-bundle.js" defer></script>
  <script src="/docs/docs.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
"""
