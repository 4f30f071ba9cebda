"""Message contracts: what each service publishes on `msa.events`, as JSON Schema (one file per event type and
version, under contracts/events/) and one AsyncAPI 3.0 document of the exchange (contracts/asyncapi.yaml) — and the
checks that keep producers and consumers honest.

- The producer's event is its domain's dataclass (plain Python, as the domain must be); pydantic's TypeAdapter
  turns it into JSON Schema, so the published schema is exactly what `dataclasses.asdict` puts in the envelope.
- A consumer's expectation is the pydantic model it subscribes with (`platform.handle(type, Model, handler)` in
  each service's entrypoints/events.py), recorded here by calling `subscribe` with a recorder instead of a platform.
- `drift()`: a model changed and its committed schema was not regenerated. `breaking()`: a change a consumer of that
  version would not survive (a field removed or retyped, a new required field), which needs a new version instead.
- `consumer_mismatches()`: a consumer requires a field the producer does not promise, or cannot parse a payload
  made from the producer's schema.

`make contracts` (`msa contracts generate`) writes the files; `msa contracts check` is what the tests run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from msa_kit.events import CloudEvent

from . import context
from .spec import repo_root

SERVICES = ("user", "catalog", "order")
EXCHANGE = "msa.events"
CONTRACTS = repo_root() / "contracts"
REGENERATE = "make contracts"  # what to run after changing an event


@dataclass(frozen=True)
class Published:
    service: str
    event: type  # the domain's dataclass, with `type` and `version`

    @property
    def type(self) -> str:
        return str(self.event.type)  # type: ignore[attr-defined]

    @property
    def version(self) -> int:
        return int(getattr(self.event, "version", 1))

    @property
    def file(self) -> str:
        return f"{self.type}.v{self.version}.schema.json"


@dataclass(frozen=True)
class Consumed:
    service: str
    type: str
    model: type[BaseModel]
    upcasters: tuple[tuple[int, Any], ...] = ()  # (from version, function): older payloads brought up to the model's

    @property
    def reads(self) -> int:
        return int(getattr(self.model, "version", 1))


def published() -> list[Published]:
    """Every event a service's domain defines (a dataclass with a dotted `type`), by service."""
    found = []
    for service in SERVICES:
        module = importlib.import_module(f"{service}.domain.events")
        for value in vars(module).values():
            if dataclasses.is_dataclass(value) and isinstance(value, type) and "." in str(getattr(value, "type", "")):
                found.append(Published(service, value))
    return sorted(found, key=lambda p: (p.type, p.version))


class _Recorder:
    """Stands in for the platform: takes down what `subscribe` asks for."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.consumed: list[Consumed] = []

    def handle(self, event_type: str, model: type[BaseModel], _handler: Any, *,
               upcasters: dict[int, Any] | None = None) -> None:
        self.consumed.append(Consumed(self.service, event_type, model, tuple(sorted((upcasters or {}).items()))))


def consumed() -> list[Consumed]:
    found: list[Consumed] = []
    for service in SERVICES:
        recorder = _Recorder(service)
        importlib.import_module(f"{service}.entrypoints.events").subscribe(recorder)
        found += recorder.consumed
    return sorted(found, key=lambda c: (c.type, c.service))


def schema(p: Published) -> dict[str, Any]:
    doc = TypeAdapter(p.event).json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"urn:msa:{p.type}:v{p.version}",
            "x-producer": p.service, **doc}


def asyncapi(pubs: list[Published], subs: list[Consumed]) -> dict[str, Any]:
    """AsyncAPI 3.0: one channel per routing key on the topic exchange, the CloudEvents envelope as the message's
    headers (AMQP properties carry it in binary mode; here it travels structured, as the JSON body), the payload
    by reference to the schema file."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for p in pubs:
        key = p.type.replace(".", "-") + f"-v{p.version}"
        messages[key] = {
            "name": p.type, "title": f"{p.type} v{p.version}", "contentType": "application/cloudevents+json",
            "summary": _summary(p),
            "payload": {"allOf": [{"$ref": "#/components/schemas/CloudEvent"},
                                  {"properties": {"type": {"const": p.type},
                                                  "dataschema": {"const": f"urn:msa:{p.type}:v{p.version}"},
                                                  "data": {"$ref": f"./events/{p.file}"}}}]},
        }
        channel = p.type.replace(".", "-")
        channels.setdefault(channel, {
            "address": p.type, "messages": {},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": EXCHANGE, "type": "topic", "durable": True,
                                                                   "autoDelete": False, "vhost": "/"}}},
        })["messages"][key] = {"$ref": f"#/components/messages/{key}"}
        operations[f"{p.service}-publishes-{channel}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"}],
            "summary": f"{p.service} publishes it through its transactional outbox"}
    for c in subs:
        channel = c.type.replace(".", "-")
        if channel not in channels:
            continue  # a consumer of a type nobody publishes: consumer_mismatches says so
        operations[f"{c.service}-consumes-{channel}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{c.service} consumes it from queue {c.service}.events (retry queue, DLQ), "
                       f"parsed as {c.model.__name__}",
            "bindings": {"amqp": {"ack": True}}}
    envelope = CloudEvent.model_json_schema()
    return {"asyncapi": "3.0.0",
            "info": {"title": "msa-sandbox events", "version": "1.0.0",
                     "description": f"Every event on the topic exchange `{EXCHANGE}`, as CloudEvents 1.0 (structured "
                                    "JSON). Generated by `make contracts` from the services' domain events; do not "
                                    "edit by hand."},
            "defaultContentType": "application/cloudevents+json",
            "servers": {"local": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}},
            "channels": channels, "operations": operations,
            "components": {"messages": messages, "schemas": {"CloudEvent": envelope}}}


def _summary(p: Published) -> str:
    doc = (p.event.__doc__ or "").strip()
    if not doc or doc.startswith(f"{p.event.__name__}("):  # the signature dataclasses write when there is none
        return f"published by {p.service}"
    return doc.split("\n")[0]


def render() -> dict[str, str]:
    """Relative path → the text `make contracts` writes."""
    pubs = published()
    files = {f"events/{p.file}": json.dumps(schema(p), indent=2, sort_keys=True) + "\n" for p in pubs}
    files["asyncapi.yaml"] = "# Generated by `make contracts` (msa_cli.contracts); do not edit by hand.\n" + \
        yaml.safe_dump(asyncapi(pubs, consumed()), sort_keys=False, allow_unicode=True, width=120)
    return files


# ---- compatibility -----------------------------------------------------------------------------------------------

def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].split("/")[-1]
        node = root.get("$defs", {}).get(name, {})
    return node


def _kind(node: dict[str, Any], root: dict[str, Any]) -> str:
    node = _resolve(node, root)
    if "anyOf" in node:
        return "|".join(sorted(_kind(n, root) for n in node["anyOf"]))
    return str(node.get("type", "any"))


def breaking(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """What a consumer of `old` would not survive in `new`: a property removed or retyped, a property that became
    required (or a new required one). Nested objects and array items are compared too; an added optional property
    is compatible (consumers ignore what they do not know)."""
    return _compare(old, new, old, new, path)


def _compare(old: dict[str, Any], new: dict[str, Any], old_root: dict[str, Any], new_root: dict[str, Any],
             path: str) -> list[str]:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    problems = []
    if _kind(old, old_root) != _kind(new, new_root):
        return [f"`{path or '.'}` changed type: {_kind(old, old_root)} → {_kind(new, new_root)}"]
    if "items" in old and "items" in new:
        problems += _compare(old["items"], new["items"], old_root, new_root, f"{path}[]")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, prop in old_props.items():
        where = f"{path}.{name}" if path else name
        if name not in new_props:
            problems.append(f"`{where}` removed")
        else:
            problems += _compare(prop, new_props[name], old_root, new_root, where)
    for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
        where = f"{path}.{name}" if path else name
        problems.append(f"`{where}` is new and required" if name not in old_props else f"`{where}` became required")
    return problems


def drift(directory: Path = CONTRACTS) -> list[str]:
    """One line per committed file that is not what the models make now, naming the breaking changes if any."""
    problems = []
    wanted = render()
    for rel, text in wanted.items():
        path = directory / rel
        if not path.exists():
            problems.append(f"{rel} is missing: run `{REGENERATE}`")
        elif path.read_text() != text:
            if rel.endswith(".schema.json"):
                broken = breaking(json.loads(path.read_text()), json.loads(text))
                if broken:
                    problems.append(f"{rel}: a breaking change to a published version ({'; '.join(broken)}): "
                                    "publish it as a new version (`version = N + 1` on the event, keep the old "
                                    "file and, for a while, the old event too; contracts/README.md)")
                    continue
            problems.append(f"{rel} is out of date: run `{REGENERATE}`")
    for path in sorted((directory / "events").glob("*.schema.json")):
        rel = f"events/{path.name}"
        if rel not in wanted and not _retired(path):
            problems.append(f"{rel}: no event makes it any more: keep the file, the contract of the events of that "
                            f"version still in flight or in a dead-letter queue, marked `\"x-retired\": true` "
                            "(once every consumer reads the new version, upcasting this one)")
    return problems


def _retired(path: Path) -> bool:
    return bool(json.loads(path.read_text()).get("x-retired"))


def generate(directory: Path = CONTRACTS, *, force: bool = False) -> list[str]:
    """Write every file; a breaking change to a published version is refused (unless `force`)."""
    refused = [p for p in drift(directory) if "breaking change" in p]
    if refused and not force:
        return refused
    for rel, text in render().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return []


# ---- consumers against producers -------------------------------------------------------------------------------

def example(node: dict[str, Any], root: dict[str, Any]) -> Any:
    """The smallest payload a schema allows, every property filled (consumers must parse what producers send)."""
    node = _resolve(node, root)
    if "anyOf" in node:
        return example(next(n for n in node["anyOf"] if n.get("type") != "null"), root)
    kind = node.get("type")
    if kind == "object":
        return {name: example(prop, root) for name, prop in node.get("properties", {}).items()}
    if kind == "array":
        return [example(node.get("items", {}), root)]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": False}.get(str(kind))


def consumer_mismatches() -> list[str]:
    """For every (consumer, event type): a producer exists; each field the consumer requires is one the producer
    always sends, with a compatible type; and a payload made from the producer's schema parses."""
    latest: dict[str, Published] = {}
    for p in published():
        latest[p.type] = p  # sorted by version: the newest wins
    problems = []
    for c in consumed():
        p = latest.get(c.type)
        if p is None:
            problems.append(f"{c.service} consumes {c.type}, which no service publishes")
            continue
        if c.reads < p.version:
            problems.append(f"{c.service} reads {c.type} v{c.reads}, but {p.service} publishes v{p.version}: teach "
                            f"{c.service} v{p.version} first (its model at version {p.version}, an upcaster from "
                            f"v{c.reads} for the events in flight), then the producer")
            continue
        produced = schema(p)
        payload = example(produced, produced)
        steps = dict(c.upcasters)
        missing = [v for v in range(p.version, c.reads) if v not in steps]
        if missing:
            problems.append(f"{c.service} reads {c.type} v{c.reads}, {p.service} publishes v{p.version}, and no "
                            f"upcaster takes v{missing[0]} further")
            continue
        for version in range(p.version, c.reads):
            payload = steps[version](dict(payload))
        problems += _older_versions(c, steps)
        if c.reads == p.version:
            expected = c.model.model_json_schema()
            for issue in _promised(expected, produced, expected, produced, ""):
                problems.append(f"{c.service} reads {c.type} v{p.version} as {c.model.__name__}: {issue}")
        try:
            c.model.model_validate(payload)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(x) for x in e["loc"]) for e in exc.errors())
            problems.append(f"{c.service} cannot parse {c.type} v{p.version} payloads as {c.model.__name__}: "
                            f"{fields}")
    return problems


def _older_versions(c: Consumed, steps: dict[int, Any]) -> list[str]:
    """Every committed older version of the type (retired ones included: their events may still be in flight or in
    a dead-letter queue) must reach the consumer's version through its upcasters, and parse there."""
    problems = []
    for path in sorted((CONTRACTS / "events").glob(f"{c.type}.v*.schema.json")):
        version = int(path.name.removeprefix(f"{c.type}.v").removesuffix(".schema.json"))
        if version >= c.reads:
            continue
        if any(v not in steps for v in range(version, c.reads)):
            problems.append(f"{c.service} reads {c.type} v{c.reads} and has no upcaster from v{version} "
                            f"(events/{path.name})")
            continue
        old = json.loads(path.read_text())
        payload = example(old, old)
        for v in range(version, c.reads):
            payload = steps[v](dict(payload))
        try:
            c.model.model_validate(payload)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(x) for x in e["loc"]) for e in exc.errors())
            problems.append(f"{c.service} cannot parse {c.type} v{version} upcast to v{c.reads}: {fields}")
    return problems


def _promised(want: dict[str, Any], have: dict[str, Any], want_root: dict[str, Any], have_root: dict[str, Any],
              path: str) -> list[str]:
    want, have = _resolve(want, want_root), _resolve(have, have_root)
    problems = []
    if "items" in want and "items" in have:
        problems += _promised(want["items"], have["items"], want_root, have_root, f"{path}[]")
    have_props, have_required = have.get("properties", {}), set(have.get("required", []))
    for name in want.get("required", []):
        where = f"{path}.{name}" if path else name
        if name not in have_props:
            problems.append(f"requires `{where}`, which the producer does not send")
        elif name not in have_required and "default" not in _resolve(have_props[name], have_root):
            # A field with a default is always sent all the same: `dataclasses.asdict` writes every field.
            problems.append(f"requires `{where}`, which the producer may leave out")
        else:
            wk, hk = _kind(want["properties"][name], want_root), _kind(have_props[name], have_root)
            if wk != hk and not (wk == "number" and hk == "integer"):
                problems.append(f"reads `{where}` as {wk}, the producer sends {hk}")
            else:
                problems += _promised(want["properties"][name], have_props[name], want_root, have_root, where)
    return problems


# ---- `msa contracts` ---------------------------------------------------------------------------------------------

cli = typer.Typer(help="Message contracts: the events' JSON Schemas and AsyncAPI document (contracts/).",
                  no_args_is_help=True)


@cli.command("generate")
def generate_cmd(force: bool = typer.Option(False, help="overwrite a published version with a breaking change")
                 ) -> None:
    """Write contracts/events/*.schema.json and contracts/asyncapi.yaml from the services' domain events."""
    refused = generate(force=force)
    if refused:
        raise context.fail("\n".join(refused))
    context.console.print(f"contracts/: {len(published())} event schemas and asyncapi.yaml up to date")


@cli.command("check")
def check_cmd() -> None:
    """Fail on a schema not regenerated, a breaking change without a new version, or a consumer expecting what its
    producer does not send."""
    problems = drift() + consumer_mismatches()
    if problems:
        raise context.fail("\n".join(problems))
    context.console.print(f"{len(published())} event types published, {len(consumed())} subscriptions: "
                          "every schema current, every consumer served")
