"""docker-compose.yml, the Dockerfile and deploy/ checked without a Docker engine: the real Compose implementation
resolves the file, the compose-spec schema and hadolint judge it, and the resolved services are checked against
the code they run (settings classes, the database init script, Prometheus' relabelling, Grafana's provisioning).

What this cannot show without an engine: that the images pull and start, that healthchecks pass in them, that
the containers reach each other. The image tags and healthcheck commands were checked by hand, against the
images' own sources, when this file was written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from msa_kit.runtime import Runtime
from pydantic import BaseModel

from program_env import BIN, LIBRARY_ENV, LIBRARY_PREFIXES, ROOT, SETTINGS, config_server_variables, known_to, \
    settings_class

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
INIT_SQL = DEPLOY / "postgres" / "init-databases.sh"

HOST_VARIABLES = ("CONSUL_HTTP_ADDR", "CONFIG_SERVER_URL", "AMQP_URL", "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")


def compose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # The project directory is explicit so a stray COMPOSE_* variable or a parent's compose file cannot interfere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run([str(BIN / "docker-compose"), "--project-directory", str(cwd), "-f",
                           str(cwd / "docker-compose.yml"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def resolved(cwd: Path = ROOT) -> dict[str, Any]:
    r = compose("--profile", "canary", "config", "--format", "json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The file as Compose itself resolves it (anchors merged, ${…} defaults applied), canary profile included,
    without a .env (a checkout has none)."""
    return resolved()


@pytest.fixture(scope="module")
def with_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with .env made from .env.example, as the compose file's header tells a user to."""
    copy = tmp_path_factory.mktemp("compose") / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "var", "__pycache__", "*_cache"))
    shutil.copy(ROOT / ".env.example", copy / ".env")
    return copy


def programs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run our image (they have a build section) and serve; not the one-shot `access` job."""
    return {name: svc for name, svc in config["services"].items() if "build" in svc and name != "access"}


def module_of(svc: dict[str, Any]) -> str:
    command = svc["command"]
    assert command[:2] == ["python", "-m"], command
    return command[2]


# ---- the real tools ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [[], ["--profile", "canary"]], ids=["default", "canary"])
def test_compose_validates_the_file(profile: list[str], with_env: Path):
    for cwd in (ROOT, with_env):  # without .env (defaults) and with the one .env.example makes
        r = compose(*profile, "config", "--quiet", cwd=cwd)
        assert r.returncode == 0 and not r.stderr.strip(), f"{cwd}: {r.stderr}"


def test_the_compose_spec_schema_accepts_the_file():
    r = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                        str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_passes_the_dockerfile():
    # No config file and the default failure threshold: any finding, even style, fails; an accepted one needs a
    # `# hadolint ignore=DLxxxx` comment with its reason next to it in the Dockerfile.
    r = subprocess.run([str(BIN / "hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"ignore=\S+\s+\S", line), f"an ignore without a reason: {line}"


# ---- the image --------------------------------------------------------------------------------------------------

def test_the_image_carries_exactly_the_makefiles_source_trees_and_the_build_context_lets_them_in():
    dockerfile = (ROOT / "Dockerfile").read_text()
    src_dirs = re.search(r"^SRC_DIRS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1).split()
    copied = re.findall(r"^COPY (\S+/src) \1$", dockerfile, re.MULTILINE)
    on_path = re.findall(r"^\s+/app/(\S+/src) \\$", dockerfile, re.MULTILINE)
    assert copied == src_dirs and on_path == src_dirs
    final = dockerfile.split("FROM base AS runtime")[1]
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm AS base$", dockerfile, re.MULTILINE)
    assert "USER 10001:10001" in final and 'HEALTHCHECK' in final and "MSA_VAR_DIR=/var/lib/msa" in final
    assert "--require-hashes" in dockerfile and not re.search(r"index-url|--index|extra-index|https?://", dockerfile)
    # .dockerignore is an allow-list: everything out (.env, .venv, var, .git...), then what the Dockerfile copies.
    ignore = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "*"
    sources = {s for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE) for s in line.split()}
    assert sources == {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}


# ---- the resolved compose file against the code -----------------------------------------------------------------

def test_every_path_the_file_names_exists(config: dict[str, Any]):
    for name, svc in config["services"].items():
        if "build" in svc:
            assert (Path(svc["build"]["context"]) / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
        for env_file in svc.get("env_file", []):
            assert env_file.get("required") is False or Path(env_file["path"]).is_file(), name
    assert os.access(INIT_SQL, os.X_OK), "the postgres image sources a non-executable *.sh instead of running it"


def test_every_variable_the_file_interpolates_has_a_demo_value_in_env_example_equal_to_its_default():
    text = (ROOT / "docker-compose.yml").read_text()
    defaults = dict(re.findall(r"\$\{(\w+):-([^}]*)\}", text))
    used = set(re.findall(r"\$\{(\w+)", text))
    example = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used == set(example), f"missing from .env.example: {used - set(example)}; unused: {set(example) - used}"
    assert {k: example[k] for k in defaults} == defaults  # no .env behaves as the example does
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_program_variable_is_one_the_program_reads_and_its_value_parses(config: dict[str, Any]):
    runtime = {f.validation_alias for f in Runtime.model_fields.values() if f.validation_alias}
    for path in filter(None, LIBRARY_ENV.values()):
        assert any(re.search(rf"environ\.get\(\"{name}\"", (ROOT / path).read_text())
                   for name, p in LIBRARY_ENV.items() if p == path)
    for name, svc in programs(config).items():
        module, env = module_of(svc), svc["environment"]
        cls = settings_class(module) if module in SETTINGS else None
        own = config_server_variables() if module == "msa_config_server" else set()
        unknown = [k for k in env if k not in runtime and k not in own and k not in LIBRARY_ENV
                   and not k.startswith(LIBRARY_PREFIXES) and not (cls and known_to(cls, k))]
        assert not unknown, f"{name}: no program reads {unknown} (renamed or misspelt?)"
        # The environment as the container gets it, and nothing else: the program's own classes must accept it.
        with mock.patch.dict(os.environ, env, clear=True):
            rt = Runtime.for_service(module)
            assert rt.port == int(env["PORT"]) and rt.instance_id == env["INSTANCE_ID"] == name
            assert rt.address == name, f"{name} registers in Consul as {rt.address!r}, not its container name"
            assert rt.consul_host_port == ("consul", 8500)
            if cls:
                settings = cls()
                if "ADMIN__TOKEN" in env:
                    assert settings.admin.token.get_secret_value() == env["ADMIN__TOKEN"]


def test_every_hostname_a_program_is_given_is_a_compose_service(config: dict[str, Any]):
    services = set(config["services"])
    for name, svc in programs(config).items():
        for var in HOST_VARIABLES:
            if value := svc["environment"].get(var):
                host = urlsplit(value if "://" in value else f"http://{value}").hostname
                assert host in services, f"{name}: {var} names {host!r}, which is no service"
                assert f"{host}" in svc.get("depends_on", {}) or var == "OTEL_EXPORTER_OTLP_ENDPOINT", \
                    f"{name} needs {host} but does not wait for it"


def test_dependencies_wait_only_on_healthchecks_that_exist(config: dict[str, Any]):
    for name, svc in config["services"].items():
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in config["services"], f"{name} depends on unknown {dep}"
            if how["condition"] == "service_healthy":
                assert config["services"][dep].get("healthcheck", {}).get("test"), f"{name} waits on {dep}"


def test_ports_bind_loopback_only_and_images_are_pinned(config: dict[str, Any]):
    for name, svc in config["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        image = svc["image"]
        tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and not tag.startswith("${"), f"{name}: {image} is not pinned"


def test_database_urls_name_a_role_and_database_the_init_script_creates_with_the_same_password(config):
    script = INIT_SQL.read_text()
    created = dict(re.findall(r"^create_service_database (\w+) \"\$\{(\w+):\?", script, re.MULTILINE))
    postgres_env = config["services"]["postgres"]["environment"]
    for name, svc in programs(config).items():
        if url := svc["environment"].get("DATABASE_URL"):
            u = urlsplit(url)
            service = u.path.lstrip("/").removeprefix("msa_")
            assert u.path == f"/msa_{service}" and u.username == f"msa_{service}", url
            assert service in created, f"{name}: the init script creates no database msa_{service}"
            assert u.password == postgres_env[created[service]], f"{name}: not the password postgres sets"


def test_the_init_script_is_strict_and_quotes_through_psql():
    script = INIT_SQL.read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert "ON_ERROR_STOP=1" in script and "<<'SQL'" in script  # the shell never expands the SQL
    assert subprocess.run(["bash", "-n", str(INIT_SQL)]).returncode == 0


def test_the_init_script_really_creates_one_private_database_per_service():
    """Against a throwaway PostgreSQL (socket only, in a temp dir); `make test` installs the server binaries
    (deploy/test-tools.sh)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
    assert bins and shutil.which("psql") and (os.geteuid() != 0 or as_postgres), \
        "needs PostgreSQL's server binaries (Debian: apt-get install postgresql; deploy/test-tools.sh)"
    # Not pytest's tmp_path: its parent is private to us, and the postgres user must reach the directory (and a
    # socket path must stay under ~100 characters).
    with tempfile.TemporaryDirectory(prefix="msa-pg-") as tmp:
        _run_init_script(bins[-1].parent, Path(tmp), as_postgres)


def _run_init_script(bin_dir: Path, tmp_path: Path, as_postgres: list[str]) -> None:
    data = tmp_path / "data"
    tmp_path.chmod(0o777)
    run = lambda *cmd, **kw: subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True,
                                            timeout=60, **kw)
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust")
    # The superuser by trust, as in the image's init phase; the service roles by password.
    (data / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(tmp_path / "log"), "-o",
        f"-c listen_addresses='' -k {tmp_path}", "start")
    passwords = {"user": "it's a pw", "catalog": "c$at pw", "order": "o;rder\"pw"}
    env = {**os.environ, "PGHOST": str(tmp_path),
           **{f"{s.upper()}_DB_PASSWORD": pw for s, pw in passwords.items()}}
    # A copy beside the server: the checkout may sit in a directory the postgres user cannot enter (a fresh clone
    # under a private mktemp dir, as CI's is).
    script = tmp_path / INIT_SQL.name
    shutil.copy(INIT_SQL, script)
    script.chmod(0o755)
    try:
        run(str(script), env=env)

        def connect(role: str, db: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["psql", "-h", str(tmp_path), "-U", f"msa_{role}", "-d", f"msa_{db}", "-Atc",
                                   "CREATE TABLE t (x int); SELECT current_user"], capture_output=True, text=True,
                                  env={**env, "PGPASSWORD": passwords[role]}, timeout=30)
        for service in passwords:
            ok = connect(service, service)
            assert ok.returncode == 0 and ok.stdout.split()[-1] == f"msa_{service}", ok.stderr
        denied = connect("user", "catalog")
        assert denied.returncode != 0 and "CONNECT privilege" in denied.stderr
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")


def test_toxiproxy_forwards_to_the_rabbitmq_service_where_the_programs_look(config: dict[str, Any]):
    (proxy,) = json.loads((DEPLOY / "toxiproxy" / "toxiproxy.json").read_text())
    host, _, port = proxy["upstream"].rpartition(":")
    assert proxy["name"] == "rabbitmq" and proxy["enabled"] is True
    assert host == "rabbitmq" and int(port) == 5672  # the broker's AMQP port inside the network
    assert proxy["listen"] == "0.0.0.0:5673"
    for name, svc in programs(config).items():
        u = urlsplit(svc["environment"]["AMQP_URL"])
        assert (u.hostname, u.port) == ("toxiproxy", 5673), f"{name} bypasses the fault proxy"


# ---- Prometheus -------------------------------------------------------------------------------------------------

def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling, for the actions prometheus.yml uses (None: the target or series is dropped)."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("source_labels", []))
        if action == "keep" and not regex.match(value) or action == "drop" and regex.match(value):
            return None
        elif action == "replace":
            if m := regex.match(value):
                labels[rule["target_label"]] = m.expand(rule.get("replacement", "$1").replace("$1", r"\1"))
        elif action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.match(k)}
        elif action not in ("keep", "drop"):
            raise AssertionError(f"relabel() does not know action {action!r}: teach it before using it")
    return {k: v for k, v in labels.items() if v != ""}  # an empty label is no label


def scrape_config(job: str) -> dict[str, Any]:
    return next(sc for sc in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"] if sc["job_name"] == job)


def consul_target(service: str, instance: str, version: str = "v1") -> dict[str, str]:
    return {"__meta_consul_service": service, "__meta_consul_service_id": instance,
            "__meta_consul_service_metadata_version": version, "__address__": f"{instance}:8000"}


METRICS_SERVICES = {"user", "catalog", "order", "gateway", "probe", "console"}  # the programs serving /metrics (msa_kit.metrics)


def test_prometheus_config_is_well_formed():
    """Always, with or without promtool: the structure Prometheus needs and every regex compiling (RE2 and
    Python's re agree on the simple ones used here)."""
    doc = yaml.safe_load(PROMETHEUS.read_text())
    assert set(doc) <= {"global", "scrape_configs", "rule_files", "alerting"}
    jobs = [sc["job_name"] for sc in doc["scrape_configs"]]
    assert len(jobs) == len(set(jobs)) and {"prometheus", "msa"} <= set(jobs)
    for sc in doc["scrape_configs"]:
        assert sc.get("static_configs") or sc.get("consul_sd_configs")
        for rule in sc.get("relabel_configs", []) + sc.get("metric_relabel_configs", []):
            re.compile(rule.get("regex", "(.*)"))
            if rule.get("action", "replace") == "replace":
                assert rule["target_label"] and rule["source_labels"]
    (sd,) = scrape_config("msa")["consul_sd_configs"]
    assert sd["server"] == "consul:8500"


def test_prometheus_keeps_exactly_the_services_with_metrics_and_names_them():
    rules = scrape_config("msa")["relabel_configs"]
    kept = {s for s in ("user", "catalog", "order", "gateway", "probe", "console", "config-server", "consul")
            if relabel(rules, consul_target(s, f"{s}-1"))}
    assert kept == METRICS_SERVICES
    labels = relabel(rules, consul_target("catalog", "catalog-v2", "v2"))
    assert labels and labels["service"] == "catalog" and labels["instance"] == "catalog-v2" and labels["version"] == "v2"


def test_promtool_accepts_the_prometheus_config(tmp_path: Path):
    """promtool (Debian: `prometheus`, installed by deploy/test-tools.sh) beside the structural test. It checks the
    schema, durations, relabel rules and RE2 regexes; it resolves nothing (Consul, hostnames) and scrapes nothing.
    Debian's build has no Consul discovery compiled in: it then checks a copy with the consul_sd_configs turned into
    static targets, so everything else is still checked."""
    promtool = shutil.which("promtool")
    assert promtool, "needs promtool (Debian: apt-get install prometheus; deploy/test-tools.sh)"
    r = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    if r.returncode and "field consul_sd_configs not found" in r.stdout + r.stderr:
        doc = yaml.safe_load(PROMETHEUS.read_text())
        for sc in doc["scrape_configs"]:
            if sc.pop("consul_sd_configs", None):
                sc["static_configs"] = [{"targets": ["user-1:8101"]}]
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(doc))
        r = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Grafana ----------------------------------------------------------------------------------------------------

def test_grafana_provisioning_parses_and_dashboards_use_the_provisioned_datasources(config: dict[str, Any]):
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())["datasources"]
    uids = {ds["uid"]: ds for ds in sources}
    assert [ds["uid"] for ds in sources if ds.get("isDefault")] == ["msa-prometheus"]
    assert uids["msa-prometheus"]["url"] == "http://prometheus:9090" and uids["msa-jaeger"]["url"] == "http://jaeger:16686"
    for ds in sources:  # every data source URL names a compose service
        assert urlsplit(ds["url"]).hostname in config["services"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())["providers"]
    mounted = {v["target"]: v["source"] for v in config["services"]["grafana"]["volumes"] if v["type"] == "bind"}
    assert Path(mounted[provider["options"]["path"]]) == GRAFANA / "dashboards"
    dashboards = list((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        refs = [p["datasource"] for p in dash["panels"] if "datasource" in p]
        refs += [t["datasource"] for p in dash["panels"] for t in p.get("targets", []) if "datasource" in t]
        assert refs and all(ref["uid"] in uids and ref["type"] == uids[ref["uid"]]["type"] for ref in refs), path


def test_each_program_gets_only_the_secrets_it_needs(with_env: Path):
    """Compose reads .env for the ${…} substitutions; no program receives it whole: none holds the PostgreSQL
    superuser's, Grafana's, the broker administrator's or Consul's management secret, and each holds only its
    own database password, broker password and Consul token."""
    values = dict(line.split("=", 1) for line in (with_env / ".env").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    own = {"user": "USER_DB_PASSWORD", "catalog": "CATALOG_DB_PASSWORD", "order": "ORDER_DB_PASSWORD"}
    every = {f"{p.upper().replace('-', '_')}_{what}" for p in ACCESS_PROGRAM.values()
             for what in ("AMQP_PASSWORD", "CONSUL_TOKEN")}
    for name, svc in programs(resolved(with_env)).items():
        env = " ".join(f"{k}={v}" for k, v in svc["environment"].items())
        program = ACCESS_PROGRAM[module_of(svc)].upper().replace("-", "_")
        foreign = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "RABBITMQ_PASSWORD", "CONSUL_MANAGEMENT_TOKEN",
                   "PROMETHEUS_CONSUL_TOKEN"} | {var for service, var in own.items() if not name.startswith(service)} \
            | (every - {f"{program}_AMQP_PASSWORD", f"{program}_CONSUL_TOKEN"})
        held = sorted(var for var in foreign if values.get(var) and values[var] in env)
        assert not held, f"{name} receives {held}"


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard: panel title, PromQL) of every query of every provisioned dashboard."""
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", []) if t.get("expr")]
    return found


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path):
    """Each panel's query, as a recording rule, through promtool's PromQL parser (a typo, an unbalanced
    parenthesis or a function that does not exist fails here, not as an empty panel). Grafana's $__rate_interval
    becomes a fixed range first, as Grafana itself substitutes it."""
    promtool = shutil.which("promtool")
    assert promtool, "needs promtool (Debian: apt-get install prometheus; deploy/test-tools.sh)"
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "20s")}
             for i, (_title, expr) in enumerate(queries)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout, r.stdout


def test_the_dashboards_are_the_three_a_learner_opens_and_link_to_each_other():
    dashboards = {json.loads(p.read_text())["uid"]: json.loads(p.read_text())
                  for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(dashboards) == {"msa-overview", "msa-resilience", "msa-events"}
    for uid, dash in dashboards.items():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: panel ids repeat"
        assert any(link.get("type") == "dashboards" and "msa-sandbox" in link.get("tags", []) for link in dash["links"])
        for panel in dash["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{uid}: {panel['title']} is wider than the grid"
            if panel["type"] != "row":
                assert panel.get("description") and panel.get("targets"), f"{uid}: {panel['title']}"


# ---- least privilege: msa_kit.access's set-up ---------------------------------------------------------------------

ACCESS_PROGRAM = {"user": "user", "catalog": "catalog", "order": "order", "msa_gateway": "gateway",
                  "msa_probe": "probe", "msa_console": "console", "msa_config_server": "config-server"}


def _mount(svc: dict[str, Any], target: str) -> dict[str, Any]:
    return next(v for v in svc["volumes"] if v["target"] == target)


def test_access_runs_before_the_broker_and_the_programs_and_writes_where_they_read(config: dict[str, Any]):
    services = config["services"]
    access_svc = services["access"]
    assert access_svc["restart"] == "no" and access_svc["depends_on"]["consul"]["condition"] == "service_healthy"
    for name in ["rabbitmq", "prometheus", *programs(config)]:
        assert services[name]["depends_on"]["access"]["condition"] == "service_completed_successfully", name
    command = access_svc["command"]
    definitions = Path(command[command.index("--definitions") + 1])
    token = Path(command[command.index("--prometheus-token") + 1])
    home = _mount(access_svc, "/var/lib/msa")
    assert home["source"] == "access" and definitions.parent.parent == token.parent.parent == Path(home["target"])
    broker = _mount(services["rabbitmq"], "/etc/rabbitmq/definitions")
    assert broker["source"] == "access" and broker["volume"]["subpath"] == definitions.parent.name
    assert broker["read_only"]
    conf = (DEPLOY / "rabbitmq" / "definitions.conf").read_text()
    assert f"load_definitions = {broker['target']}/{definitions.name}" in conf.splitlines()
    assert "RABBITMQ_DEFAULT_USER" not in services["rabbitmq"].get("environment", {})  # seeded by definitions
    prometheus = _mount(services["prometheus"], "/etc/prometheus/consul")
    assert prometheus["source"] == "access" and prometheus["volume"]["subpath"] == token.parent.name
    sd = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][1]["consul_sd_configs"][0]
    assert sd["authorization"]["credentials_file"] == f"{prometheus['target']}/{token.name}"


def test_each_program_reaches_the_broker_and_consul_as_itself(with_env: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """`access` run with the environment compose gives it (from .env.example) writes a definitions file in which
    each program's AMQP_URL user exists with that password's hash, and sets up each program's CONSUL_HTTP_TOKEN."""
    import base64
    import hashlib

    from msa_kit import access

    config = resolved(with_env)
    set_up: dict[str, str] = {}

    async def apply(address: str, management: str, tokens: dict[str, str]) -> list[str]:
        assert address == "consul:8500" and management == config["services"]["consul"]["environment"][
            "CONSUL_HTTP_TOKEN"]
        set_up.update(tokens)
        return list(tokens)

    monkeypatch.setattr(access, "apply_consul_acl", apply)
    with mock.patch.dict(os.environ, config["services"]["access"]["environment"], clear=True):
        access.main(["--definitions", str(tmp_path / "broker" / "d.json"),
                     "--consul", "--prometheus-token", str(tmp_path / "prometheus" / "token")])
    document = json.loads((tmp_path / "broker" / "d.json").read_text())
    hashes = {u["name"]: base64.b64decode(u["password_hash"]) for u in document["users"]}
    assert (tmp_path / "prometheus" / "token").read_text() == set_up["prometheus"]
    for name, svc in programs(config).items():
        program = ACCESS_PROGRAM[module_of(svc)]
        url = urlsplit(svc["environment"]["AMQP_URL"])
        assert url.username == program, f"{name} reaches the broker as {url.username!r}"
        raw = hashes[program]
        assert raw[4:] == hashlib.sha256(raw[:4] + (url.password or "").encode()).digest(), name
        assert svc["environment"]["CONSUL_HTTP_TOKEN"] == set_up[program], name
        uuid_ok = re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", set_up[program])
        assert uuid_ok, f"{name}: Consul wants a UUID for a token's SecretID"


def test_consul_denies_what_carries_no_token(config: dict[str, Any]):
    consul = config["services"]["consul"]
    local = json.loads(consul["environment"]["CONSUL_LOCAL_CONFIG"])["acl"]
    assert local["enabled"] is True and local["default_policy"] == "deny"
    management = consul["environment"]["CONSUL_HTTP_TOKEN"]
    assert local["tokens"] == {"initial_management": management, "agent": management}
    assert "-dev" not in consul["command"] and "-server" in consul["command"]  # ACL state survives a restart
    assert consul["healthcheck"]["test"][1:] == ["consul", "acl", "token", "read", "-self"]


def test_toxiproxys_api_is_on_the_admin_network_only(config: dict[str, Any]):
    services = config["services"]
    toxiproxy = services["toxiproxy"]
    address = toxiproxy["networks"]["admin"]["ipv4_address"]
    assert f"-host={address}" in toxiproxy["command"] and toxiproxy["networks"]["admin"]["gw_priority"] > 0
    assert urlsplit(toxiproxy["environment"]["TOXIPROXY_URL"]).hostname == address
    on_admin = {name for name, svc in services.items() if "admin" in (svc.get("networks") or {})}
    assert on_admin == {"toxiproxy", "console"}
    assert urlsplit(services["console"]["environment"]["FAULTPROXY_URL"]).hostname == address
    proxies = json.loads((DEPLOY / "toxiproxy" / "toxiproxy.json").read_text())
    assert all(p["listen"].startswith("0.0.0.0:") for p in proxies)  # the proxies, not the API, on every network
