"""The order service's fallback when the catalog is unavailable: the last prices it was told, if recent enough.

A fallback is business logic, not plumbing: whether a 5-minute-old price may still be charged is the business's
call (`order.price_cache_max_age_s`). Without a usable price for every line the order is refused at once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .ports import PriceList, PricesUnavailable

log = logging.getLogger(__name__)


class LastKnownPrices:
    """A PriceList that remembers what the catalog answered and falls back to it within a staleness limit."""

    def __init__(self, catalog: PriceList, max_age_s: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.catalog, self.max_age_s, self.clock = catalog, max_age_s, clock
        self._known: dict[str, tuple[int, float]] = {}
        self.fallbacks = 0

    async def prices(self, skus: list[str]) -> dict[str, int]:
        try:
            fresh = await self.catalog.prices(skus)
        except PricesUnavailable as exc:
            now, limit = self.clock(), self.max_age_s()
            known = {s: p for s, (p, at) in self._known.items() if s in skus and now - at <= limit}
            missing = [s for s in skus if s not in known]
            if missing:
                raise PricesUnavailable(f"{exc}; no price younger than {limit:g} s for {missing}") from exc
            self.fallbacks += 1
            log.warning("catalog unavailable (%s): using last known prices for %s", exc, skus)
            return known
        now = self.clock()
        self._known.update({s: (p, now) for s, p in fresh.items()})
        return fresh
