"""The route table, from `gateway.routes` in config-repo/gateway.yml. First matching route wins.

Two shapes of one route: `RouteSpec` is what config says (validated by pydantic once, when config loads or
refreshes); `Route` is that spec compiled for the hot path — plain attributes, byte-string headers, a precomputed
prefix or regex — so matching a request costs a few string comparisons and no validation.
"""

from __future__ import annotations

import re
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .ratelimit import Limit
from .upstream import FixedTarget


class HeaderFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: dict[str, str] = Field(default_factory=dict, description="set (replacing any value of that name)")
    remove: list[str] = Field(default_factory=list)


class RateLimitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(gt=0, description="tokens refilled every `per_s` seconds")
    per_s: float = Field(1.0, gt=0)
    burst: int | None = Field(None, gt=0, description="bucket capacity; default `requests`")


class RouteSpec(BaseModel):
    # A typo in config-repo (`strip_prefx`) is refused at refresh, not silently ignored.
    model_config = ConfigDict(extra="forbid")

    id: str
    path: str = Field(description="prefix on segment boundaries (/api/orders matches /api/orders/1), or a pattern "
                                  "with {name} segments (/api/orders/{id}/cancel)")
    methods: list[str] = Field(default_factory=list, description="empty: any method")
    headers: dict[str, str] = Field(default_factory=dict, description="header predicates: a value, or '*' for any")
    exact: bool = False
    service: str | None = Field(None, description="target service, by its name in discovery")
    url: str | None = Field(None, description="or a fixed upstream, e.g. http://127.0.0.1:9000")
    strip_prefix: int = Field(1, ge=0, description="leading path segments removed before forwarding")
    prefix: str = Field("", description="prepended to the forwarded path after stripping")
    request_headers: HeaderFilter = HeaderFilter()
    response_headers: HeaderFilter = HeaderFilter()
    timeout_s: float | None = Field(None, gt=0, description="default: http.timeout_s")
    retries: int = Field(0, ge=0, le=5, description="extra attempts for GET/HEAD/OPTIONS on 502/503/504")
    rate_limit: RateLimitSpec | None = None
    max_body_bytes: int | None = Field(None, ge=1, description="default: gateway.max_body_bytes")
    auth: Literal["required", "public"] = "required"
    roles: list[str] = Field(default_factory=list, description="the caller needs one of them (implies auth)")
    weights: dict[str, int] = Field(default_factory=dict, description="by instance version: {v1: 90, v2: 10}")

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        return [m.upper() for m in methods]

    @field_validator("path", "prefix")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if path and not path.startswith("/"):
            raise ValueError(f"{path!r} must start with '/'")
        return path

    @model_validator(mode="after")
    def _one_target(self) -> "RouteSpec":
        if (self.service is None) == (self.url is None):
            raise ValueError(f"route {self.id!r}: give exactly one of `service` and `url`")
        if self.url is not None and httpx.URL(self.url).scheme not in ("http", "https"):
            raise ValueError(f"route {self.id!r}: url must be http(s)")
        return self


_PARAM = re.compile(r"\{[^/{}]+\}")


class Route:
    """A compiled route: everything a request needs, computed once per configuration."""

    __slots__ = ("spec", "id", "methods", "prefix", "regex", "exact", "headers", "service", "base_url", "target",
                 "fixed", "strip", "add_prefix", "req_add", "req_remove", "resp_add", "resp_remove", "timeout",
                 "retries", "limit", "max_body_bytes", "auth", "roles", "weights")

    def __init__(self, spec: RouteSpec) -> None:
        self.spec, self.id = spec, spec.id
        self.methods = frozenset(spec.methods) or None
        path = spec.path.rstrip("/") or "/"
        self.exact = spec.exact
        if _PARAM.search(path):
            body = _PARAM.sub("[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
            self.regex: re.Pattern[str] | None = re.compile(body + ("$" if spec.exact else "(?:/|$)"))
            self.prefix = path[:path.index("{")]  # a cheap first test before the regex
        else:
            self.regex, self.prefix = None, path
        self.headers = [(k.lower().encode(), None if v == "*" else v.encode()) for k, v in spec.headers.items()]
        self.service = spec.service
        self.base_url = spec.url.rstrip("/") if spec.url else None
        self.fixed = FixedTarget.parse(self.base_url) if self.base_url else None
        self.target = spec.service or spec.url or ""
        self.strip, self.add_prefix = spec.strip_prefix, spec.prefix.rstrip("/")
        self.req_add = [(k.lower().encode(), v.encode()) for k, v in spec.request_headers.add.items()]
        self.req_remove = frozenset(k.lower().encode() for k in spec.request_headers.remove) | {k for k, _ in self.req_add}
        self.resp_add = [(k.lower().encode(), v.encode()) for k, v in spec.response_headers.add.items()]
        self.resp_remove = frozenset(k.lower().encode() for k in spec.response_headers.remove) | {k for k, _ in self.resp_add}
        self.timeout = httpx.Timeout(spec.timeout_s, connect=min(1.0, spec.timeout_s)) if spec.timeout_s else None
        self.retries = spec.retries
        rl = spec.rate_limit
        self.limit = Limit(rl.burst or rl.requests, rl.requests / rl.per_s) if rl else None
        self.max_body_bytes = spec.max_body_bytes
        self.roles = frozenset(spec.roles)
        self.auth = spec.auth == "required" or bool(self.roles)
        self.weights = dict(spec.weights) or None

    def matches(self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        prefix = self.prefix
        if self.regex is None:
            if not (path == prefix or (not self.exact and (prefix == "/" or path.startswith(prefix + "/")))):
                return False
        elif not path.startswith(prefix) or self.regex.match(path) is None:
            return False
        if self.headers:
            sent = dict(headers or ())
            for name, value in self.headers:
                got = sent.get(name)
                if got is None or (value is not None and got != value):
                    return False
        return True

    def upstream_path(self, path: str) -> str:
        if self.strip:
            segments = path.split("/", self.strip + 1)  # ['', s1, ..., rest]
            rest = "/" + segments[-1] if len(segments) > self.strip + 1 else "/"
        else:
            rest = path
        if self.add_prefix:
            return self.add_prefix if rest == "/" else self.add_prefix + rest
        return rest

    def public_path(self, upstream: str) -> str | None:
        """The inverse of upstream_path, for the aggregated docs: the public path that would reach `upstream`
        through this route (whether this route is the one that matches it is the table's question).

        Only a route that strips segments of its own path can be inverted (the usual case)."""
        own = [s for s in self.prefix.split("/") if s]
        if self.regex is not None or self.strip > len(own):
            return None
        base = self.add_prefix + "".join("/" + s for s in own[self.strip:])
        if upstream == base or (base == "" and upstream.startswith("/")):
            tail = upstream[len(base):]
        elif upstream.startswith(base + "/"):
            tail = upstream[len(base):]
        else:
            return None
        return (self.prefix.rstrip("/") + tail) or "/"


class RouteTable:
    def __init__(self, specs: list[RouteSpec]) -> None:
        self.specs = specs
        self.routes = [Route(s) for s in specs]

    def match(self, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Route | None:
        for route in self.routes:
            if route.matches(method, path, headers):
                return route
        return None

    def describe(self) -> list[dict[str, object]]:
        return [s.model_dump(exclude_defaults=True) for s in self.specs]
