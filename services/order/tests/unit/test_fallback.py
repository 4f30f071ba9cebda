import pytest

from order.service_layer.fallback import LastKnownPrices
from order.service_layer.ports import PricesUnavailable


class Catalog:
    def __init__(self) -> None:
        self.up, self.calls = True, 0

    async def prices(self, skus: list[str]) -> dict[str, int]:
        self.calls += 1
        if not self.up:
            raise PricesUnavailable("breaker open")
        return {s: 100 for s in skus}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_when_the_catalog_is_down_recent_prices_are_used():
    catalog, clock = Catalog(), Clock()
    prices = LastKnownPrices(catalog, lambda: 60, clock)
    assert await prices.prices(["A", "B"]) == {"A": 100, "B": 100}
    catalog.up, clock.now = False, 30
    assert await prices.prices(["A"]) == {"A": 100} and prices.fallbacks == 1


async def test_stale_or_unknown_prices_refuse_the_order():
    catalog, clock = Catalog(), Clock()
    prices = LastKnownPrices(catalog, lambda: 60, clock)
    await prices.prices(["A"])
    catalog.up = False
    with pytest.raises(PricesUnavailable, match=r"\['B'\]"):
        await prices.prices(["A", "B"])  # B was never priced
    clock.now = 61
    with pytest.raises(PricesUnavailable, match="no price younger than 60"):
        await prices.prices(["A"])  # A's price is too old now
