"""The order service's view of its neighbours, over the kit's load-balanced, breaker-guarded client."""

from __future__ import annotations

import httpx

from msa_kit.resilience import ServiceUnavailable, UpstreamTimeout

from ..service_layer.ports import PricesUnavailable


class UserClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def exists(self, user_id: str) -> bool:
        r = await self.http.get(f"http://user/internal/users/{user_id}")
        if r.status_code == 404:
            return False
        r.raise_for_status()
        return True


class CatalogClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def prices(self, skus: list[str]) -> dict[str, int]:
        try:
            r = await self.http.get("http://catalog/products", params=[("sku", s) for s in skus])
        except (ServiceUnavailable, UpstreamTimeout) as exc:
            raise PricesUnavailable(str(exc)) from exc
        if r.status_code >= 500:
            raise PricesUnavailable(f"catalog answered {r.status_code}")
        r.raise_for_status()
        return {p["sku"]: int(p["price_cents"]) for p in r.json()}
