"""Message contracts (contracts/, msa_cli.contracts): the committed schemas are what the producers' events make, every
subscription is served by its producer, and the checks themselves catch what they are for — a breaking change
without a new version (naming the field), a schema not regenerated (naming the command), a consumer expecting a
field its producer stopped sending."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from msa_cli import contracts
from order.domain import events as order_events

CONSUMED = contracts.consumed()


def test_the_committed_contracts_are_what_the_events_make():
    assert contracts.drift() == []


@pytest.mark.parametrize("sub", CONSUMED, ids=[f"{c.service}<-{c.type}" for c in CONSUMED])
def test_every_consumer_is_served_by_its_producer(sub: contracts.Consumed):
    mine = [p for p in contracts.consumer_mismatches() if p.startswith(f"{sub.service} ") and sub.type in p]
    assert mine == []


def test_every_subscription_and_every_event_is_in_the_asyncapi_document():
    doc = yaml.safe_load((contracts.CONTRACTS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    assert {s.service for s in CONSUMED} == {"catalog", "order", "user"} and len(CONSUMED) >= 6
    for p in contracts.published():
        channel = doc["channels"][p.type.replace(".", "-")]
        assert channel["address"] == p.type and channel["bindings"]["amqp"]["exchange"]["name"] == "msa.events"
        message = doc["components"]["messages"][f"{p.type.replace('.', '-')}-v{p.version}"]
        ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        assert (contracts.CONTRACTS / ref).is_file(), ref
        assert doc["operations"][f"{p.service}-publishes-{p.type.replace('.', '-')}"]["action"] == "send"
    for c in CONSUMED:
        assert doc["operations"][f"{c.service}-consumes-{c.type.replace('.', '-')}"]["action"] == "receive"
    assert {"id", "source", "type", "specversion", "data"} <= set(doc["components"]["schemas"]["CloudEvent"]
                                                                 ["properties"])


# ---- the safety net is itself tested ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PlacedWithoutTotal:  # order.placed v2 with `total` renamed: what a careless refactoring does
    type: ClassVar[str] = "order.placed"
    version: ClassVar[int] = 2
    order_id: str
    user_id: str
    lines: list[order_events.OrderLine]
    amount: order_events.Money
    synthetic: bool = False


def with_order_placed(monkeypatch: pytest.MonkeyPatch, event: type) -> None:
    real = contracts.published

    def published() -> list[contracts.Published]:
        return [contracts.Published("order", event) if p.type == "order.placed" else p for p in real()]

    monkeypatch.setattr(contracts, "published", published)


@pytest.fixture
def copy_of_contracts(tmp_path: Path) -> Path:
    shutil.copytree(contracts.CONTRACTS, tmp_path / "contracts")
    return tmp_path / "contracts"


def test_a_breaking_change_without_a_new_version_fails_naming_the_field(monkeypatch, copy_of_contracts: Path):
    with_order_placed(monkeypatch, PlacedWithoutTotal)
    (problem,) = [p for p in contracts.drift(copy_of_contracts) if "order.placed" in p]
    assert "breaking change" in problem and "`total` removed" in problem and "new version" in problem
    # make contracts refuses to overwrite the published version
    assert contracts.generate(copy_of_contracts) and \
        json.loads((copy_of_contracts / "events/order.placed.v2.schema.json").read_text())["properties"].get("total")
    # and the consumer that reads the field is named
    assert "catalog reads order.placed v2 as OrderPlacedV2: requires `total`, which the producer does not send" \
        in contracts.consumer_mismatches()


def test_an_added_optional_field_is_drift_to_regenerate_not_a_break(monkeypatch, copy_of_contracts: Path):
    with_order_placed(monkeypatch, PlacedWithCurrency)
    assert "events/order.placed.v2.schema.json is out of date: run `make contracts`" in \
        contracts.drift(copy_of_contracts)
    assert not any("breaking" in p for p in contracts.drift(copy_of_contracts))
    assert contracts.generate(copy_of_contracts) == []
    assert contracts.drift(copy_of_contracts) == []
    assert contracts.consumer_mismatches() == [], "catalog ignores a field it does not know"


def test_a_new_version_keeps_the_old_one_published_until_it_is_retired(monkeypatch, copy_of_contracts: Path):
    with_order_placed(monkeypatch, PlacedV3)
    problems = contracts.drift(copy_of_contracts)
    assert "events/order.placed.v3.schema.json is missing: run `make contracts`" in problems
    assert any(p.startswith("events/order.placed.v2.schema.json: no event makes it") for p in problems)
    assert not any("breaking" in p for p in problems), "v2's file is not v3's business"


@dataclasses.dataclass(frozen=True)
class RetypedLine:
    sku: str
    quantity: str  # was an integer
    unit_price_cents: int


@dataclasses.dataclass(frozen=True)
class PlacedRetyped:
    type: ClassVar[str] = "order.placed"
    order_id: str
    user_id: str
    lines: list[RetypedLine]
    total: order_events.Money
    channel: str  # new and required
    synthetic: bool = False


@dataclasses.dataclass(frozen=True)
class PlacedWithCurrency(order_events.OrderPlaced):
    currency: str = "EUR"  # an added field, with a default


@dataclasses.dataclass(frozen=True)
class PlacedV3(PlacedWithoutTotal):
    version: ClassVar[int] = 3


def test_the_comparison_sees_nested_retyping_and_new_required_fields():
    old = contracts.schema(contracts.Published("order", order_events.OrderPlaced))

    broken = contracts.breaking(old, contracts.schema(contracts.Published("order", PlacedRetyped)))
    assert "`lines[].quantity` changed type: integer → string" in broken
    assert "`channel` is new and required" in broken


def test_msa_contracts_check_says_what_it_checked(monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from msa_cli import context
    from msa_cli.app import app

    monkeypatch.setattr(context, "state", dict(context.state))  # the callback sets the target: keep it to this test

    result = CliRunner().invoke(app, ["contracts", "check"])
    assert result.exit_code == 0, result.output
    assert "8 event types published, 6 subscriptions" in result.output


def test_a_producer_may_move_to_a_new_version_only_once_its_consumers_read_it(monkeypatch: pytest.MonkeyPatch):
    """The order of a versioned change (contracts/README.md): consumers learn v3 first, with an upcaster for v2
    events in flight; only then does the producer publish v3."""
    import pydantic

    with_order_placed(monkeypatch, PlacedV3)  # the producer jumped ahead
    assert any(p.startswith("catalog reads order.placed v2, but order publishes v3: teach catalog v3 first")
               for p in contracts.consumer_mismatches())
    monkeypatch.undo()  # back to the real producer: at v2

    class CatalogReadsV3(pydantic.BaseModel):  # a consumer that learnt v3, and still reads v2 through an upcaster
        version: ClassVar[int] = 3
        order_id: str
        amount: dict

    def v2_to_v3(data: dict) -> dict:
        return {**data, "amount": data.pop("total")}

    real = contracts.consumed

    def catalog_as(model: type, upcasters: tuple) -> list[contracts.Consumed]:
        return [contracts.Consumed("catalog", "order.placed", model, upcasters)
                if c.service == "catalog" and c.type == "order.placed" else c for c in real()]

    monkeypatch.setattr(contracts, "consumed", lambda: catalog_as(CatalogReadsV3, ((2, v2_to_v3),)))
    mine = [p for p in contracts.consumer_mismatches() if p.startswith("catalog") and "order.placed" in p]
    assert mine == ["catalog reads order.placed v3 and has no upcaster from v1 (events/order.placed.v1.schema.json)"]
    monkeypatch.setattr(contracts, "consumed", lambda: catalog_as(CatalogReadsV3, ()))
    assert "catalog reads order.placed v3, order publishes v2, and no upcaster takes v2 further" in \
        contracts.consumer_mismatches()


def test_the_catalog_still_reads_the_retired_v1_through_its_upcaster():
    """order.placed v1 is retired (order publishes v2), but v1 events may still be in flight or in a dead-letter
    queue: a payload made from v1's committed schema, upcast by the catalog, parses as its v2 model."""
    (catalog,) = [c for c in CONSUMED if c.service == "catalog" and c.type == "order.placed"]
    assert catalog.reads == 2 and dict(catalog.upcasters).keys() == {1}
    v1 = json.loads((contracts.CONTRACTS / "events/order.placed.v1.schema.json").read_text())
    assert v1["x-retired"] is True
    parsed = catalog.model.model_validate(dict(catalog.upcasters)[1](contracts.example(v1, v1)))
    assert parsed.total.currency == "EUR" and parsed.total.amount_cents == 1  # type: ignore[attr-defined]


SPECS = contracts.repo_root() / "var" / "tools" / "asyncapi-specs-6.11.1" / "package" / "schemas"


def test_the_asyncapi_document_is_valid_asyncapi_3(tmp_path: Path):
    """Against the AsyncAPI initiative's own JSON Schema (npm's @asyncapi/specs, fetched and digest-checked by
    deploy/test-tools.sh, which `make test` runs first), with the check-jsonschema the compose checks use; a broken
    copy of the document fails, so the validation is not a formality."""
    import subprocess
    import sys

    schema = SPECS / "3.0.0-without-$id.json"
    assert schema.is_file(), f"{schema} is missing: run deploy/test-tools.sh (it needs npm)"
    check = [str(Path(sys.executable).parent / "check-jsonschema"), "--schemafile", str(schema)]
    ok = subprocess.run([*check, str(contracts.CONTRACTS / "asyncapi.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = yaml.safe_load((contracts.CONTRACTS / "asyncapi.yaml").read_text())
    doc["channels"]["order-placed"]["address"] = 42  # an address is a string or null
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(doc))
    bad = subprocess.run([*check, str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout
