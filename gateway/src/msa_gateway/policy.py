"""What applies to every response of the gateway, from config: CORS and security headers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .asgi import Headers

# The CSP is strict: the gateway's own pages (/docs) and the console's (/console) load scripts, styles and data from
# this origin only, with no inline script or style attribute; images may also be data: URLs (icons in CSS).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
DEFAULT_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class CorsSection(BaseModel):
    allow_origins: list[str] = Field(default_factory=list, description="exact origins, or '*'; empty: CORS off")
    allow_methods: list[str] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    allow_headers: list[str] = ["authorization", "content-type", "idempotency-key", "traceparent"]
    expose_headers: list[str] = ["x-trace-id", "traceparent", "retry-after", "ratelimit-limit", "ratelimit-remaining",
                                 "ratelimit-reset"]
    allow_credentials: bool = False
    max_age_s: int = 600


class Cors:
    """The subset of the Fetch standard's CORS protocol a JSON API needs, precomputed as header bytes."""

    def __init__(self, section: CorsSection) -> None:
        self.any = "*" in section.allow_origins
        self.origins = frozenset(o.encode() for o in section.allow_origins if o != "*")
        self.credentials = section.allow_credentials
        common: Headers = [(b"vary", b"Origin")]
        if self.credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self.actual = common + [(b"access-control-expose-headers", ", ".join(section.expose_headers).encode())]
        self.preflight = common + [
            (b"access-control-allow-methods", ", ".join(m.upper() for m in section.allow_methods).encode()),
            (b"access-control-allow-headers", ", ".join(section.allow_headers).encode()),
            (b"access-control-max-age", str(section.max_age_s).encode())]
        self.methods = frozenset(m.upper().encode() for m in section.allow_methods)

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: bytes) -> bool:
        return self.any or origin in self.origins

    def headers(self, origin: bytes, *, preflight: bool = False) -> Headers:
        # With credentials a wildcard may not be sent back (Fetch standard): echo the origin instead.
        allow = b"*" if self.any and not self.credentials else origin
        return [(b"access-control-allow-origin", allow), *(self.preflight if preflight else self.actual)]


def security_headers(configured: dict[str, str]) -> Headers:
    """Every response carries these; an empty value in config removes a default."""
    merged = {**{k.lower(): v for k, v in DEFAULT_SECURITY_HEADERS.items()}, **{k.lower(): v for k, v in configured.items()}}
    return [(k.encode(), v.encode()) for k, v in merged.items() if v]
