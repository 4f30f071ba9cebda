"""Least privilege on the shared tools: what each program may do on RabbitMQ and in Consul, derived from one table
of what it publishes, consumes and calls. Local mode needs none of it (a guest broker and our own registry, as a
laptop's RabbitMQ and a Consul dev agent would); the compose and Kubernetes stacks, where every program shares a
network, are rendered from it (`python -m msa_kit.access`), and the tests check both against it.

RabbitMQ (https://www.rabbitmq.com/docs/access-control): a user's configure/write/read regexes on resource names,
plus a *topic* permission on `msa.events` whose write regex is matched against the routing key — the event type —
so catalog may publish `stock.*` and nothing else: a forged `order.confirmed` is refused with ACCESS_REFUSED.
Consul (https://developer.hashicorp.com/consul/docs/security/acl): a policy per program that may register itself
and read only the services it calls, with `default_policy = "deny"` for everyone else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx


@dataclass(frozen=True)
class Grants:
    publishes: str = ""  # the event types it publishes on msa.events, as a prefix: "stock." (none: "")
    consumes: bool = False  # it has queues of its own: <service>.events, .retry, .dlq
    calls: tuple[str, ...] = ()  # the services it finds through discovery ("*": every one)
    registers: bool = True  # it registers itself in discovery


# Every kit program also finds the config server through discovery (msa_kit.settings) and listens on the bus.
PROGRAMS: dict[str, Grants] = {
    "user": Grants(publishes="user.", consumes=True),
    "catalog": Grants(publishes="stock.", consumes=True),
    "order": Grants(publishes="order.", consumes=True, calls=("user", "catalog")),
    "gateway": Grants(calls=("user", "catalog", "order", "console")),
    "probe": Grants(calls=("gateway",)),
    "console": Grants(calls=("*",)),
    "config-server": Grants(),  # publishes the bus's refresh events, consumes nothing
}
EVENTS_EXCHANGE, BUS_EXCHANGE = "msa.events", "msa.bus"


@dataclass(frozen=True)
class BrokerPermissions:
    configure: str
    write: str
    read: str
    topic_exchange: str  # the exchange its topic permission is on
    topic_write: str  # routing keys it may publish there

    def as_dict(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


def _any_of(namespace: str, names: list[str]) -> str:
    return f"^{re.escape(namespace)}({'|'.join(names)})$"


def broker_permissions(program: str, namespace: str = "") -> BrokerPermissions:
    """The RabbitMQ permissions of `program`'s user (on the one vhost), for broker names prefixed by `namespace`."""
    grants = PROGRAMS[program]
    e = re.escape
    events, unrouted, bus = e(EVENTS_EXCHANGE), e(EVENTS_EXCHANGE + ".unrouted"), e(BUS_EXCHANGE)
    if program == "config-server":  # declares the bus exchange and publishes refresh events on it; reads nothing
        return BrokerPermissions(_any_of(namespace, [bus]), _any_of(namespace, [bus]), "^$",
                                 namespace + BUS_EXCHANGE, ".*")
    own_bus = rf"{bus}\.{e(program)}\.[^.]+"  # msa.bus.<service>.<instance>: its instances' refresh queues
    own = [rf"{e(program)}\.events", rf"{e(program)}\.events\.retry", rf"{e(program)}\.events\.dlq"] \
        if grants.consumes else []
    # Declaring: the events exchange, its alternate exchange and parking queue, the bus exchange (every program
    # declares what it uses, idempotently), its own queues.
    configure = _any_of(namespace, [events, unrouted, bus, own_bus, *own])
    # Writing: publishing to the events exchange (publishers), the alternate exchange (declaring an exchange with
    # one needs write on it), binding its queues (write on the queue) and, for retries and dead letters, the
    # default exchange.
    write = _any_of(namespace, [*([events] if grants.publishes else []), unrouted, own_bus, *own[:1]])
    if grants.consumes:
        write += "|^amq\\.default$"
    # Reading: the events exchange (declaring an exchange with an alternate one needs read on it), the exchanges it
    # binds to (read on the exchange), its own queues (consume, and the DLQ's get).
    read = _any_of(namespace, [events, unrouted, bus, own_bus, *own])
    topic = f"^{e(grants.publishes)}" if grants.publishes else "^$"
    return BrokerPermissions(configure, write, read, namespace + EVENTS_EXCHANGE, topic)


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt(4) + sha256(salt + password)), as its definitions
    files hold it — the password itself never lands in a file."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_user(program: str, namespace: str = "") -> str:
    return f"{namespace}{program}"


def rabbitmq_definitions(passwords: dict[str, str], *, namespace: str = "", vhost: str = "/",
                         admin: tuple[str, str] | None = None) -> dict[str, Any]:
    """A definitions document (rabbitmqctl import_definitions, or `load_definitions` at broker start): a user per
    program in `passwords`, each with only its permissions; `admin` (the management UI's, the operator's) too."""
    users, permissions, topic_permissions = [], [], []
    if admin is not None:
        users.append({"name": admin[0], "password_hash": rabbitmq_password_hash(admin[1]),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]})
        permissions.append({"user": admin[0], "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    for program, password in sorted(passwords.items()):
        user, grant = broker_user(program, namespace), broker_permissions(program, namespace)
        users.append({"name": user, "password_hash": rabbitmq_password_hash(password),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        permissions.append({"user": user, "vhost": vhost, **grant.as_dict()})
        topic_permissions.append({"user": user, "vhost": vhost, "exchange": grant.topic_exchange,
                                  "write": grant.topic_write, "read": ".*"})
    return {"users": users, "vhosts": [{"name": vhost}], "permissions": permissions,
            "topic_permissions": topic_permissions}


def consul_policy(program: str) -> str:
    """The HCL rules of `program`'s Consul token: write its own service (register, deregister, pass its TTL check),
    read the config server and the services it calls. Health answers are filtered by node too, so every program
    reads the nodes (there is one in compose: the agent's)."""
    grants = PROGRAMS[program]
    rules = [f'service "{program}" {{ policy = "write" }}']
    if "*" in grants.calls:
        rules.append('service_prefix "" { policy = "read" }')
    else:
        rules += [f'service "{called}" {{ policy = "read" }}' for called in ("config-server", *grants.calls)
                  if called != program]
    rules.append('node_prefix "" { policy = "read" }')
    return "\n".join(rules) + "\n"


# Prometheus finds every instance through Consul: it reads every service and node (and no more).
PROMETHEUS_POLICY = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def consul_policies() -> dict[str, str]:
    """Every token the stacks make, by name: one per program, and Prometheus's."""
    return {**{program: consul_policy(program) for program in PROGRAMS}, "prometheus": PROMETHEUS_POLICY}


async def apply_consul_acl(address: str, management_token: str, tokens: dict[str, str]) -> list[str]:
    """Create or update, idempotently, a policy `msa-<name>` and a token with the chosen SecretID `tokens[name]`
    (a UUID, from the stack's secrets) for each name of consul_policies() in `tokens`. Consul may still be
    electing its leader: it is retried for up to a minute. Returns the names it set up."""
    for attempt in range(30):
        try:
            return await _apply_consul_acl(address, management_token, tokens)
        except httpx.HTTPError as exc:
            if attempt == 29:
                raise SystemExit(f"access: Consul at {address} did not take the ACL set-up: {exc}") from None
            print(f"access: Consul not ready ({exc}); retrying")
            await asyncio.sleep(2)
    raise AssertionError("unreachable")


async def _apply_consul_acl(address: str, management_token: str, tokens: dict[str, str]) -> list[str]:
    headers = {"X-Consul-Token": management_token}
    done = []
    async with httpx.AsyncClient(base_url=f"http://{address.removeprefix('http://')}", headers=headers,
                                 timeout=10) as consul:
        for name, rules in consul_policies().items():
            if name not in tokens:
                continue
            policy = {"Name": f"msa-{name}", "Description": f"msa-sandbox: {name}", "Rules": rules}
            found = await consul.get(f"/v1/acl/policy/name/msa-{name}")
            if found.status_code == 200:
                r = await consul.put(f"/v1/acl/policy/{found.json()['ID']}", json=policy)
            else:
                r = await consul.put("/v1/acl/policy", json=policy)
            r.raise_for_status()
            token = {"Description": f"msa-sandbox: {name}", "Policies": [{"Name": f"msa-{name}"}]}
            existing = await consul.get("/v1/acl/token/self", headers={"X-Consul-Token": tokens[name]})
            if existing.status_code == 200:
                r = await consul.put(f"/v1/acl/token/{existing.json()['AccessorID']}", json=token)
            else:
                r = await consul.put("/v1/acl/token", json={**token, "SecretID": tokens[name]})
            r.raise_for_status()
            done.append(name)
    return done


def env_name(program: str, what: str) -> str:
    """The environment variable holding a program's secret: CATALOG_AMQP_PASSWORD, CONFIG_SERVER_CONSUL_TOKEN."""
    return f"{program.upper().replace('-', '_')}_{what}"


def _secrets_from_env(what: str, names: Iterable[str] = PROGRAMS) -> dict[str, str]:
    missing = [env_name(p, what) for p in names if not os.environ.get(env_name(p, what))]
    if missing:
        raise SystemExit(f"access: not set: {', '.join(missing)}")
    return {p: os.environ[env_name(p, what)] for p in names}


def _write(path: Path, text: str) -> None:
    # Read by another container's user (the broker's, Prometheus's): the folder and file are world-readable; they
    # hold salted hashes and one read-only token, never a password.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(0o644)


def main(argv: list[str] | None = None) -> None:
    """`python -m msa_kit.access [--definitions FILE] [--consul [--prometheus-token FILE]]`, secrets from the
    environment. The compose stack's `access` service does both; Kubernetes' Job only Consul (the broker's users
    are the topology operator's objects there)."""
    parser = argparse.ArgumentParser(prog="python -m msa_kit.access", description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=Path,
                        help="write the broker's definitions here: a user per program (<PROGRAM>_AMQP_PASSWORD) "
                             "and the administrator (RABBITMQ_USER, RABBITMQ_PASSWORD)")
    parser.add_argument("--consul", action="store_true",
                        help="set up Consul's ACL: a policy and token per program (<PROGRAM>_CONSUL_TOKEN) at "
                             "CONSUL_HTTP_ADDR with CONSUL_MANAGEMENT_TOKEN")
    parser.add_argument("--prometheus-token", type=Path,
                        help="with --consul: Prometheus's token too (PROMETHEUS_CONSUL_TOKEN), written here")
    args = parser.parse_args(argv)
    if not (args.definitions or args.consul) or (args.prometheus_token and not args.consul):
        parser.error("give --definitions, --consul or both (--prometheus-token goes with --consul)")
    if args.definitions:
        admin = (os.environ.get("RABBITMQ_USER", ""), os.environ.get("RABBITMQ_PASSWORD", ""))
        if not all(admin):
            raise SystemExit("access: RABBITMQ_USER and RABBITMQ_PASSWORD must be set")
        document = rabbitmq_definitions(_secrets_from_env("AMQP_PASSWORD"), admin=admin)
        _write(args.definitions, json.dumps(document, indent=2))
        print(f"access: broker users {', '.join(u['name'] for u in document['users'])} -> {args.definitions}")
    if args.consul:
        names = [*PROGRAMS, *(["prometheus"] if args.prometheus_token else [])]
        tokens = _secrets_from_env("CONSUL_TOKEN", names)
        management = os.environ.get("CONSUL_MANAGEMENT_TOKEN", "")
        if not management:
            raise SystemExit("access: CONSUL_MANAGEMENT_TOKEN must be set")
        address = os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        done = asyncio.run(apply_consul_acl(address, management, tokens))
        if args.prometheus_token:
            _write(args.prometheus_token, tokens["prometheus"])
        print(f"access: Consul policies and tokens for {', '.join(done)}")


if __name__ == "__main__":
    main()
