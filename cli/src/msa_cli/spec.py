"""What the local topology is: which programs, on which ports, with which environment.

This is the contract with the servers: they learn where they are and where their dependencies are only from the
environment built here (see msa_kit.runtime). The runner (runner.py) knows nothing sandbox-specific; tests hand it a
spec of tiny stand-in programs instead.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

# Local mode's demo key for `{cipher}` values in config-repo (Spring's samples ship one the same way). It protects
# nothing real; set ENCRYPT_KEY (and re-encrypt config-repo's values through POST /encrypt) for anything that does.
DEMO_ENCRYPT_KEY = "msa-sandbox-demo-key"
# What config-repo's `{cipher}` admin.token decrypts to under that key; also the config server's admin token
# (POST /encrypt, /decrypt) in local mode. MSA_ADMIN_TOKEN / CONFIG_ADMIN_TOKEN replace them.
DEMO_ADMIN_TOKEN = "sandbox-admin-token"


def admin_token(environ: dict[str, str] | None = None) -> str:
    return (environ if environ is not None else os.environ).get("MSA_ADMIN_TOKEN") or DEMO_ADMIN_TOKEN

# Handed on from the caller's environment to every program when set. Secrets among them (keys, tokens) travel in
# supervisord's environment, never in the config file it reads.
PASSTHROUGH_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "ENCRYPT_KEY",
    "MSA_ADMIN_TOKEN",
    "CONFIG_ADMIN_TOKEN",
    "LOG_LEVEL",
)


def repo_root() -> Path:
    """The checkout this package lives in (cli/src/msa_cli/spec.py → four levels up)."""
    return Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Program:
    """One supervised process: one instance of one server."""

    name: str  # supervisord program name and INSTANCE_ID, e.g. "catalog-2"
    command: tuple[str, ...]
    port: int
    health_path: str = "/health"
    # Discovery service names this instance registers under. Empty: readiness is its /health answer instead
    # (discovery and the config server, which everything else needs before it can register).
    registers: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # on top of the spec's shared env
    priority: int = 500  # supervisord starts lower numbers first
    home: str = "/"  # the page a person opens first (the discovery UI, a config document, ...)
    docs: str | None = "/docs"
    # Modules supervisord may import once for every program before forking them (msa_cli.supervise): what the
    # program's `__main__` imports, never the `__main__` itself. Only for `python -m <module>` commands.
    preload: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))  # lists welcome
        object.__setattr__(self, "preload", tuple(self.preload))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class TopologySpec:
    programs: tuple[Program, ...]
    var_dir: Path
    directory: Path  # every program's working directory
    discovery: str | None = "discovery"  # the program answering Consul's /v1/health/service/<name>
    discovery_token: str = ""  # Consul's ACL token for those questions (compose: the management token)
    env: dict[str, str] = field(default_factory=dict)  # shared by every program
    amqp_url: str = DEFAULT_AMQP_URL
    require_broker: bool = True  # preflight opens an AMQP connection before starting anything
    reserved_ports: tuple[int, ...] = ()  # listened on by a program besides its own port (the broker proxy)

    def __post_init__(self) -> None:
        # supervisord resolves relative paths against its own directory, not ours: make them absolute here.
        object.__setattr__(self, "var_dir", Path(self.var_dir).resolve())
        object.__setattr__(self, "directory", Path(self.directory).resolve())
        object.__setattr__(self, "programs", tuple(self.programs))
        names = [p.name for p in self.programs]
        if len(set(names)) != len(names):
            raise ValueError(f"program names must be unique: {names}")
        ports = [p.port for p in self.programs]
        if len(set(ports)) != len(ports):
            raise ValueError(f"ports must be unique: {ports}")
        if self.discovery is not None and self.discovery not in names:
            raise ValueError(f"discovery program {self.discovery!r} is not among {names}")

    def program(self, name: str) -> Program:
        for p in self.programs:
            if p.name == name:
                return p
        raise KeyError(f"no program {name!r}; known: {', '.join(p.name for p in self.programs)}")

    @property
    def expected(self) -> dict[str, int]:
        """Passing instances discovery must list, per service name, before the topology counts as up."""
        return dict(Counter(s for p in self.programs for s in p.registers))

    @property
    def preload(self) -> tuple[str, ...]:
        """Every program's preload, each module once, in order."""
        return tuple(dict.fromkeys(m for p in self.programs for m in p.preload))

    @property
    def discovery_url(self) -> str | None:
        return self.program(self.discovery).url if self.discovery else None


@dataclass(frozen=True)
class Ports:
    """The local port plan (DESIGN §3). Tests use Ports.free() so they never collide with a running `make up`."""

    discovery: int = 8500
    config_server: int = 8888
    gateway: int = 8080
    user: tuple[int, ...] = (8101,)
    catalog: tuple[int, ...] = (8201, 8202)
    order: tuple[int, ...] = (8301, 8302)
    faultproxy: int = 8474  # the fault proxy's control API (Toxiproxy's port)
    broker_proxy: int = 5673  # where every program reaches RabbitMQ: the fault proxy, forwarding to AMQP_URL's broker
    probe: int = 8090  # the synthetic probe (probe/README.md)
    console: int = 8095  # the web console (console/README.md), reached through the gateway at /console

    @classmethod
    def free(cls) -> Ports:
        """Ports the OS calls free right now. Racy in principle; preflight re-checks before anything starts."""
        defaults = cls()
        picked = free_ports(7 + len(defaults.user) + len(defaults.catalog) + len(defaults.order))
        it = iter(picked)
        return cls(
            discovery=next(it),
            config_server=next(it),
            gateway=next(it),
            user=tuple(next(it) for _ in defaults.user),
            catalog=tuple(next(it) for _ in defaults.catalog),
            order=tuple(next(it) for _ in defaults.order),
            faultproxy=next(it),
            broker_proxy=next(it),
            probe=next(it),
            console=next(it),
        )

    def all(self) -> list[int]:
        return [self.discovery, self.config_server, self.gateway, *self.user, *self.catalog, *self.order,
                self.faultproxy, self.broker_proxy, self.probe, self.console]


def free_ports(n: int) -> list[int]:
    # Hold every socket open until all are picked, so the OS cannot hand out the same port twice.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def broker_address(amqp_url: str) -> str:
    """host:port of the broker an AMQP URL names (the fault proxy's upstream)."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def via_proxy(amqp_url: str, port: int) -> str:
    """The same AMQP URL (credentials, vhost, query) with host:port replaced by the local fault proxy's."""
    parts = urlsplit(amqp_url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def default_spec(
    ports: Ports | None = None,
    *,
    var_dir: Path | str | None = None,
    namespace: str | None = None,
    amqp_url: str | None = None,
    config_repo: Path | str | None = None,
    extra_env: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
    databases: dict[str, str] | None = None,
) -> TopologySpec:
    """The sandbox's topology: fault proxy, discovery, config server, gateway, user ×1, catalog ×2, order ×2, and
    the synthetic probe (one transaction through the gateway every period, probe/README.md), and the web console
    (console/README.md).

    Every program reaches RabbitMQ through the fault proxy (its AMQP_URL names the proxy), so tests and the workshop
    can cut or slow the broker for the sandbox alone; spec.amqp_url stays the real broker (preflight checks it).

    Unset arguments come from `environ` (default: os.environ) — AMQP_URL, MSA_VAR_DIR, MSA_NAMESPACE, CONFIG_REPO —
    and then from the repo's defaults. `databases` gives a service its DATABASE_URL (`{"catalog":
    "postgresql+asyncpg://…/catalog"}`; from the environment: USER_DATABASE_URL, CATALOG_DATABASE_URL,
    ORDER_DATABASE_URL); a service without one keeps its SQLite file under the var dir.
    """
    ports = ports or Ports()
    environ = dict(os.environ if environ is None else environ)
    root = repo_root()
    var = Path(var_dir or environ.get("MSA_VAR_DIR") or root / "var").resolve()
    amqp = amqp_url or environ.get("AMQP_URL") or DEFAULT_AMQP_URL
    shared = {
        "HOST": "127.0.0.1",
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{ports.discovery}",
        "CONFIG_SERVER_URL": f"http://127.0.0.1:{ports.config_server}",
        "CONFIG_REPO": str(Path(config_repo or environ.get("CONFIG_REPO") or root / "config-repo").resolve()),
        "AMQP_URL": via_proxy(amqp, ports.broker_proxy),
        "FAULTPROXY_URL": f"http://127.0.0.1:{ports.faultproxy}",
        "MSA_VAR_DIR": str(var),
        "MSA_NAMESPACE": namespace if namespace is not None else environ.get("MSA_NAMESPACE", ""),
        "MSA_PROFILE": "local",
        # Export spans every 200 ms, not every 5 s: a trace shows up while the person is still looking for it.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PYTHONUNBUFFERED": "1",  # log lines reach var/log/*.log as they happen
    }
    shared["ENCRYPT_KEY"] = DEMO_ENCRYPT_KEY
    shared["CONFIG_ADMIN_TOKEN"] = DEMO_ADMIN_TOKEN
    shared |= {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)}
    shared |= extra_env or {}

    def py(module: str) -> tuple[str, ...]:
        return (sys.executable, "-m", module)

    # Forwards to the real broker; it reads only FAULTPROXY_PROXIES (host:port, no credentials), never AMQP_URL.
    broker_proxy = {"name": "rabbitmq", "listen": f"127.0.0.1:{ports.broker_proxy}", "upstream": broker_address(amqp)}
    programs = [
        Program("faultproxy", py("msa_faultproxy"), ports.faultproxy, priority=5, home="/proxies", docs=None,
                env={"FAULTPROXY_PROXIES": json.dumps([broker_proxy])},
                preload=("uvicorn", "msa_faultproxy.api", "msa_faultproxy.proxy")),
        # Everything else registers with discovery and fetches its config first: start these two ahead.
        Program("discovery", py("msa_discovery"), ports.discovery, priority=10, home="/ui", docs=None,
                preload=("msa_discovery.api", "msa_discovery.registry")),
        Program("config-server", py("msa_config_server"), ports.config_server, priority=20, home="/gateway/local",
                preload=("msa_config_server.api", "msa_kit.discovery", "msa_kit.runtime")),
        Program("gateway", py("msa_gateway"), ports.gateway, registers=("gateway",), priority=200,
                preload=("uvloop", "msa_kit.app", "msa_gateway.app", "msa_gateway.server")),
    ]
    # Each service's database, if not its SQLite file: in the shared environment (it may hold a password; the
    # supervisord config file never does), each program picking its own (msa_kit.runtime.Runtime.for_service).
    for service in ("user", "catalog", "order"):
        if url := (databases or {}).get(service) or environ.get(f"{service.upper()}_DATABASE_URL"):
            shared[f"{service.upper()}_DATABASE_URL"] = url
    for service, module, service_ports in (
        ("user", "user", ports.user),
        ("catalog", "catalog", ports.catalog),
        ("order", "order", ports.order),
    ):
        for i, port in enumerate(service_ports, start=1):
            programs.append(Program(f"{service}-{i}", py(module), port, registers=(service,), priority=100,
                                    preload=("msa_kit.app", f"{module}.bootstrap")))
    # Last: it calls the gateway, which calls everything else.
    programs.append(Program("probe", py("msa_probe"), ports.probe, registers=("probe",), priority=300, home="/probe",
                            preload=("msa_kit.app", "msa_probe.bootstrap")))
    programs.append(Program("console", py("msa_console"), ports.console, registers=("console",), priority=300,
                            home="/console/", preload=("msa_kit.app", "msa_console.bootstrap")))
    return TopologySpec(
        programs=tuple(programs), var_dir=var, directory=root, discovery="discovery", env=shared, amqp_url=amqp,
        reserved_ports=(ports.broker_proxy,)
    )
