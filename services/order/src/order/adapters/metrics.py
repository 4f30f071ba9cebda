"""The order service's business figures, as Prometheus counters (served by the kit's GET /metrics).

Every series carries `synthetic` ("true"/"false"): orders a synthetic probe placed (X-Synthetic-Transaction: true)
are counted apart, so a business figure is `...{synthetic="false"}` and the probe never inflates it.

- `msa_orders_placed_total{synthetic}`: orders created and committed (an idempotent replay is not a new order).
- `msa_saga_outcomes_total{outcome, synthetic}`: orders that reached an end of the saga, counted once the change is
  committed: `confirmed` or `rejected` (the catalog's answer), `cancelled` (by the customer; stock goes back).
"""

from __future__ import annotations

from prometheus_client import Counter

OUTCOMES = ("confirmed", "rejected", "cancelled")
FLAGS = ("true", "false")

ORDERS_PLACED = Counter("msa_orders_placed", "Orders placed (created and committed), synthetic or not",
                        ["synthetic"])
SAGA_OUTCOMES = Counter("msa_saga_outcomes", "Orders that reached an end of the saga (confirmed, rejected, "
                        "cancelled), counted when the change committed", ["outcome", "synthetic"])


def flag(synthetic: bool) -> str:
    return "true" if synthetic else "false"


def create_series() -> None:
    """Every label combination at 0, so each series exists before the first order (a rate over a series that
    appears only with its first increment misses that increment). Called from bootstrap, not at import: supervisord
    imports this module once for every program it forks (msa_cli.supervise), and only order instances should
    export these series."""
    for f in FLAGS:
        ORDERS_PLACED.labels(synthetic=f)
        for outcome in OUTCOMES:
            SAGA_OUTCOMES.labels(outcome=outcome, synthetic=f)


def order_placed(synthetic: bool) -> None:
    ORDERS_PLACED.labels(synthetic=flag(synthetic)).inc()


def saga_outcome(outcome: str, synthetic: bool) -> None:
    assert outcome in OUTCOMES, outcome
    SAGA_OUTCOMES.labels(outcome=outcome, synthetic=flag(synthetic)).inc()
