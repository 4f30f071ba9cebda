"""Event versions at the consumer (InboxDispatcher): the model's version is read as is, an older payload is upcast
step by step before parsing, a newer one (or one without a way up) is a poison message with the reason."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from msa_kit.events import CloudEvent, PoisonMessage
from msa_kit.inbox import InboxDispatcher, payload_version


class Total(BaseModel):
    amount_cents: int
    currency: str


class PlacedV2(BaseModel):
    version: ClassVar[int] = 2
    order_id: str
    total: Total


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 carried `total_cents` (euros implied); v2 a money object."""
    total = data.pop("total_cents")
    return {**data, "total": {"amount_cents": total, "currency": "EUR"}}


class FakeInbox:
    async def apply(self, event: CloudEvent, fn: Any) -> None:
        await fn(None)


def event(version: int | None, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(source="/order", type="order.placed", data=data,
                      dataschema=f"urn:msa:order.placed:v{version}" if version else None)


async def handled(dispatcher_kwargs: dict[str, Any], e: CloudEvent) -> list[PlacedV2]:
    seen: list[PlacedV2] = []

    async def handler(payload: PlacedV2, _uow: Any) -> None:
        seen.append(payload)

    await InboxDispatcher(FakeInbox(), PlacedV2, handler, **dispatcher_kwargs)(e)  # type: ignore[arg-type]
    return seen


def test_the_version_comes_from_dataschema():
    assert payload_version(event(3, {})) == 3 and payload_version(event(None, {})) == 1


async def test_a_payload_of_the_version_the_model_reads_is_parsed_as_is():
    (p,) = await handled({}, event(2, {"order_id": "o1", "total": {"amount_cents": 5, "currency": "USD"}}))
    assert p.total.currency == "USD"


async def test_an_older_payload_is_upcast_before_parsing():
    (p,) = await handled({"upcasters": {1: v1_to_v2}}, event(1, {"order_id": "o1", "total_cents": 700}))
    assert p.total == Total(amount_cents=700, currency="EUR")


async def test_without_an_upcaster_an_older_payload_is_poison_naming_the_gap():
    with pytest.raises(PoisonMessage, match="has no upcaster from v1"):
        await handled({}, event(1, {"order_id": "o1", "total_cents": 700}))


async def test_a_newer_payload_than_the_model_reads_is_dead_lettered_not_half_understood():
    with pytest.raises(PoisonMessage, match="order.placed v3 is newer than PlacedV2 reads"):
        await handled({}, event(3, {"order_id": "o1"}))
