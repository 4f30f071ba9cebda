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
import base64
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def env_name(program: str, what: str) -> str:
    """The environment variable holding a program's secret: CATALOG_AMQP_PASSWORD, CONFIG_SERVER_CONSUL_TOKEN."""
    return f"{program.upper().replace('-', '_')}_{what}"


def _secrets_from_env(what: str) -> dict[str, str]:
    missing = [env_name(p, what) for p in PROGRAMS if not os.environ.get(env_name(p, what))]
    if missing:
        raise SystemExit(f"access: not set: {', '.join(missing)}")
    return {p: os.environ[env_name(p, what)] for p in PROGRAMS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msa_kit.access", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rabbit = commands.add_parser("rabbitmq-definitions", help="write the broker's definitions file: a user per "
                                 "program (<PROGRAM>_AMQP_PASSWORD) and the admin (RABBITMQ_USER/_PASSWORD)")
    rabbit.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "rabbitmq-definitions":
        admin = (os.environ.get("RABBITMQ_USER", ""), os.environ.get("RABBITMQ_PASSWORD", ""))
        if not all(admin):
            raise SystemExit("access: RABBITMQ_USER and RABBITMQ_PASSWORD must be set")
        document = rabbitmq_definitions(_secrets_from_env("AMQP_PASSWORD"), admin=admin)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2))
        args.out.chmod(0o644)  # the broker runs as another uid; it holds salted hashes only
        print(f"access: wrote {args.out}: users {', '.join(u['name'] for u in document['users'])}")


if __name__ == "__main__":
    main()
