"""msa_kit.access below the broker and Consul: what each program's permissions let through and refuse (the black-box
test tests/test_broker_permissions.py has this machine's RabbitMQ judge the same), RabbitMQ's password hash, and
setting up Consul's ACL idempotently against a stand-in for its ACL API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid

import httpx
import pytest

from msa_kit import access
from msa_kit.access import PROGRAMS, broker_permissions, consul_policies, rabbitmq_definitions

NS = "test-1."


def allowed(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ matches permissions as unanchored regexes


@pytest.mark.parametrize("program", ["user", "catalog", "order"])
def test_a_service_may_configure_read_and_bind_only_its_own_queues(program: str):
    grant = broker_permissions(program, NS)
    for suffix in ("events", "events.retry", "events.dlq"):
        assert allowed(grant.configure, f"{NS}{program}.{suffix}") and allowed(grant.read, f"{NS}{program}.{suffix}")
    assert allowed(grant.write, f"{NS}{program}.events") and allowed(grant.write, "amq.default")
    for other in set(PROGRAMS) - {program}:
        for suffix in ("events", "events.retry", "events.dlq"):
            name = f"{NS}{other}.{suffix}"
            assert not any(allowed(p, name) for p in (grant.configure, grant.write, grant.read)), name
    # Its own instances' refresh queues, no one else's; the events exchange, without the namespace never.
    assert allowed(grant.configure, f"{NS}msa.bus.{program}.{program}-1")
    assert not allowed(grant.configure, f"{NS}msa.bus.gateway.gateway")
    assert not allowed(grant.configure, "msa.events") and allowed(grant.configure, f"{NS}msa.events")


def test_each_publisher_may_publish_only_its_own_event_types():
    topics = {p: broker_permissions(p, NS).topic_write for p in PROGRAMS}
    assert allowed(topics["catalog"], "stock.reserved") and not allowed(topics["catalog"], "order.confirmed")
    assert allowed(topics["order"], "order.confirmed") and not allowed(topics["order"], "stock.reserved")
    for program in ("gateway", "probe", "console"):
        grant = broker_permissions(program, NS)
        assert not allowed(grant.write, f"{NS}msa.events") and not allowed(topics[program], "order.confirmed")
    assert not any(allowed(broker_permissions(p, NS).write, f"{NS}msa.bus") for p in PROGRAMS if p != "config-server")
    assert allowed(broker_permissions("config-server", NS).write, f"{NS}msa.bus")


def test_definitions_hold_salted_sha256_hashes_never_the_passwords():
    document = rabbitmq_definitions({"catalog": "c-pass"}, admin=("admin", "a-pass"))
    assert "c-pass" not in json.dumps(document) and "a-pass" not in json.dumps(document)
    user = next(u for u in document["users"] if u["name"] == "catalog")
    raw = base64.b64decode(user["password_hash"])
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"c-pass").digest()
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256" and user["tags"] == []
    assert {"user": "catalog", "vhost": "/", "exchange": "msa.events", "write": "^stock\\.", "read": ".*"} \
        in document["topic_permissions"]
    admin = next(u for u in document["users"] if u["name"] == "admin")
    assert admin["tags"] == ["administrator"]


def test_each_program_may_register_itself_and_read_what_it_calls_in_consul():
    policies = consul_policies()
    assert set(policies) == set(PROGRAMS) | {"prometheus"}
    rule = re.compile(r'^(service|service_prefix|node_prefix) "([\w-]*)" \{ policy = "(read|write)" \}$')
    for name, hcl in policies.items():
        rules = [rule.match(line).groups() for line in hcl.splitlines()]  # type: ignore[union-attr]
        writes = {target for kind, target, policy in rules if policy == "write"}
        assert writes == (set() if name == "prometheus" else {name}), name
        assert ("node_prefix", "", "read") in rules  # health answers are filtered by node read
    order = [line for line in policies["order"].splitlines() if "read" in line]
    assert order == ['service "config-server" { policy = "read" }', 'service "user" { policy = "read" }',
                     'service "catalog" { policy = "read" }', 'node_prefix "" { policy = "read" }']


class FakeConsulAcl:
    """Consul's ACL endpoints as msa_kit.access uses them: policies by name, tokens by their SecretID."""

    def __init__(self, management: str) -> None:
        self.management = management
        self.policies: dict[str, dict] = {}  # by ID
        self.tokens: dict[str, dict] = {}  # by AccessorID

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("x-consul-token")
        path, body = request.url.path, json.loads(request.content or b"null")
        if path == "/v1/acl/token/self":
            found = next((t for t in self.tokens.values() if t["SecretID"] == token), None)
            return httpx.Response(200, json=found) if found else httpx.Response(403, text="ACL not found")
        if token != self.management:
            return httpx.Response(403, text="Permission denied")
        if path.startswith("/v1/acl/policy/name/"):
            found = next((p for p in self.policies.values() if p["Name"] == path.rsplit("/", 1)[1]), None)
            return httpx.Response(200, json=found) if found else httpx.Response(403, text="ACL not found")
        if path == "/v1/acl/policy":
            assert not any(p["Name"] == body["Name"] for p in self.policies.values()), "a second policy of a name"
            policy = {**body, "ID": str(uuid.uuid4())}
            self.policies[policy["ID"]] = policy
            return httpx.Response(200, json=policy)
        if path.startswith("/v1/acl/policy/"):
            self.policies[path.rsplit("/", 1)[1]] = {**body, "ID": path.rsplit("/", 1)[1]}
            return httpx.Response(200, json=body)
        if path == "/v1/acl/token":
            uuid.UUID(body["SecretID"])  # Consul refuses a SecretID that is no UUID
            created = {**body, "AccessorID": str(uuid.uuid4())}
            self.tokens[created["AccessorID"]] = created
            return httpx.Response(200, json=created)
        if path.startswith("/v1/acl/token/"):
            accessor = path.rsplit("/", 1)[1]
            self.tokens[accessor] = {**self.tokens[accessor], **body}
            return httpx.Response(200, json=self.tokens[accessor])
        return httpx.Response(404)


def test_consul_acl_set_up_is_idempotent_and_gives_each_token_its_chosen_secret(monkeypatch: pytest.MonkeyPatch):
    management = str(uuid.uuid4())
    fake = FakeConsulAcl(management)
    real = httpx.AsyncClient
    monkeypatch.setattr(access.httpx, "AsyncClient",
                        lambda **kw: real(**kw, transport=httpx.MockTransport(fake)))
    secrets = {name: str(uuid.uuid4()) for name in consul_policies()}
    for _ in range(2):  # every `docker compose up` runs it again
        done = asyncio.run(access.apply_consul_acl("consul:8500", management, secrets))
    assert done == list(consul_policies())
    assert len(fake.policies) == len(fake.tokens) == len(secrets)
    by_secret = {t["SecretID"]: t for t in fake.tokens.values()}
    for name, secret in secrets.items():
        assert by_secret[secret]["Policies"] == [{"Name": f"msa-{name}"}]
    rules = {p["Name"]: p["Rules"] for p in fake.policies.values()}
    assert rules["msa-catalog"] == consul_policies()["catalog"]
