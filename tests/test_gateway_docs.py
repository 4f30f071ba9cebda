"""The aggregated OpenAPI document, served by the gateway, and a property-based run against it (Schemathesis):
generated requests to every public operation, through the gateway, with and without a token. No 5xx, and every
response with a documented status matches its documented schema."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from support import Api, Stack

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 30  # bounded: the whole run stays well under a minute on 2 cores


def test_docs_aggregate_every_service_under_its_public_prefix(stack: Stack):
    doc = httpx.get(f"{stack.gateway}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    assert {"/api/auth/token", "/api/users", "/api/users/me", "/api/catalog/products", "/api/catalog/products/{sku}",
            "/api/orders", "/api/orders/{order_id}", "/api/admin/users/{user_id}"} <= paths.keys()
    assert not [p for p in paths if p.endswith(("/health", "/ready", "/admin/config")) or "/internal/" in p]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                                                 "bearerFormat": "JWT"}
    assert paths["/api/orders"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/api/catalog/products"]["get"]
    assert "x-unavailable" not in doc["info"]
    page = httpx.get(f"{stack.gateway}/docs", timeout=5)
    assert page.status_code == 200 and 'id="swagger-ui"' in page.text and "//" not in page.text  # no CDN
    for asset in re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text):  # every asset from the gateway itself
        assert httpx.get(f"{stack.gateway}{asset}", timeout=5).status_code == 200, asset
    assert "/openapi.json" in httpx.get(f"{stack.gateway}/docs/docs.js", timeout=5).text


def test_generated_requests_through_the_gateway_find_no_5xx_and_no_schema_violation(stack: Stack, api: Api):
    raw = httpx.get(f"{stack.gateway}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    stock_before = {sku: p["stock"] for sku, p in api.products().items()}
    started = time.monotonic()
    try:
        calls, failures = fuzz(schema, stack.gateway, api.auth)
    finally:
        heal_stock(api, stock_before)
    print(f"\nschemathesis: {calls} generated calls over {len(raw['paths'])} paths in "
          f"{time.monotonic() - started:.1f} s (stock healed after), {len(failures)} failures")
    assert not failures, "\n".join(failures[:20])


def fuzz(schema, base_url: str, auth: dict[str, str]) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    failures: list[str] = []
    calls = 0
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case) -> None:  # type: ignore[no-untyped-def]
                nonlocal calls
                for headers in (auth, {}):  # as a signed-in user, and anonymously
                    kwargs = case.as_transport_kwargs(base_url=base_url)
                    sent = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
                    body = {k: kwargs[k] for k in ("json", "content", "files") if kwargs.get(k) is not None}
                    data = kwargs.get("data")
                    if data is not None:
                        body["data" if isinstance(data, dict) else "content"] = data
                    request = client.build_request(kwargs["method"], kwargs["url"], headers={**sent, **headers},
                                                   params=kwargs.get("params"), **body)
                    try:
                        response = client.send(request)
                    except httpx.LocalProtocolError:
                        continue  # a generated header no HTTP client may send (e.g. a trailing space)
                    calls += 1
                    try:
                        case.validate_response(response, checks=checks)
                    except (Exception, BaseExceptionGroup) as exc:  # collect: one run reports every failure
                        failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                        f"{str(exc)[:300]}")

            run()
    return calls, failures


def heal_stock(api: Api, before: dict[str, int]) -> None:
    """Generated orders that were confirmed took stock: cancel them (the saga releases it) and wait until the
    catalog is back where it was, so later tests find the stock they expect."""
    for order in api.orders():
        if api.wait_final(order["id"])["status"] == "CONFIRMED":
            r = api.http.post(f"/api/orders/{order['id']}/cancel", headers=api.auth)
            assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15
    while {sku: p["stock"] for sku, p in api.products().items()} != before:
        assert time.monotonic() < deadline, "stock not restored after cancelling the generated orders"
        time.sleep(0.1)
