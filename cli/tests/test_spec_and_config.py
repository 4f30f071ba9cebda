"""The contract with the servers (the environment every program gets) and the supervisord config it becomes."""

from __future__ import annotations

import configparser
import json
import sys
from pathlib import Path

import pytest
from supervisor.datatypes import dict_of_key_value_pairs

from msa_cli import Ports, Program, Topology, TopologySpec, default_spec
from msa_cli.preflight import mask_url
from msa_cli.supervisor_config import render_config
from msa_cli.spec import broker_address, repo_root, via_proxy


def test_default_topology_and_its_environment(tmp_path: Path):
    spec = default_spec(
        var_dir=tmp_path / "var",
        namespace="t123",
        environ={"AMQP_URL": "amqp://u:p@broker:5672/", "ENCRYPT_KEY": "k", "UNRELATED": "x"},
    )
    assert {p.name: p.port for p in spec.programs} == {
        "faultproxy": 8474,
        "discovery": 8500,
        "config-server": 8888,
        "gateway": 8080,
        "user-1": 8101,
        "catalog-1": 8201,
        "catalog-2": 8202,
        "order-1": 8301,
        "order-2": 8302,
        "probe": 8090,
        "console": 8095,
    }
    assert spec.expected == {"gateway": 1, "user": 1, "catalog": 2, "order": 2, "probe": 1, "console": 1}
    assert spec.program("catalog-2").command == (sys.executable, "-m", "catalog")
    assert spec.program("discovery").command[-1] == "msa_discovery"
    assert spec.program("discovery").priority < spec.program("catalog-1").priority
    root = repo_root()
    assert spec.env == {
        "HOST": "127.0.0.1",
        "CONSUL_HTTP_ADDR": "127.0.0.1:8500",
        "CONFIG_SERVER_URL": "http://127.0.0.1:8888",
        "CONFIG_REPO": str(root / "config-repo"),
        "AMQP_URL": "amqp://u:p@127.0.0.1:5673/",  # through the fault proxy
        "FAULTPROXY_URL": "http://127.0.0.1:8474",
        "MSA_VAR_DIR": str(tmp_path / "var"),
        "MSA_NAMESPACE": "t123",
        "MSA_PROFILE": "local",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PYTHONUNBUFFERED": "1",
        "ENCRYPT_KEY": "k",  # the caller's, over the demo key
        "CONFIG_ADMIN_TOKEN": "sandbox-admin-token",  # local mode's demo admin token
    }
    assert spec.directory == root and (root / "Makefile").exists()


def test_every_program_reaches_the_broker_through_the_fault_proxy(tmp_path: Path):
    spec = default_spec(var_dir=tmp_path, environ={"AMQP_URL": "amqp://u:p@broker:5600/vh?heartbeat=5"})
    assert spec.amqp_url == "amqp://u:p@broker:5600/vh?heartbeat=5"  # preflight checks the real broker
    assert spec.env["AMQP_URL"] == "amqp://u:p@127.0.0.1:5673/vh?heartbeat=5"  # shared by every program
    assert not any("AMQP_URL" in p.env for p in spec.programs)  # ... and no program overrides it
    proxy = spec.program("faultproxy")
    assert proxy.command[-1] == "msa_faultproxy" and proxy.registers == () and proxy.health_path == "/health"
    assert json.loads(proxy.env["FAULTPROXY_PROXIES"]) == [
        {"name": "rabbitmq", "listen": "127.0.0.1:5673", "upstream": "broker:5600"}
    ]
    assert all(proxy.priority < p.priority for p in spec.programs if p is not proxy)  # up first, down last
    assert spec.env["FAULTPROXY_URL"] == proxy.url
    assert "faultproxy" not in spec.expected  # never registers in discovery


@pytest.mark.parametrize(
    ("url", "upstream", "proxied"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "127.0.0.1:5672", "amqp://guest:guest@127.0.0.1:9/"),
        ("amqp://rabbit", "rabbit:5672", "amqp://127.0.0.1:9"),
        ("amqps://u:p%40ss@mq.example:5671/%2F", "mq.example:5671", "amqps://u:p%40ss@127.0.0.1:9/%2F"),
        ("amqps://u:p@mq.example/", "mq.example:5671", "amqps://u:p@127.0.0.1:9/"),
        ("amqp://u:p@[::1]:5600/", "[::1]:5600", "amqp://u:p@127.0.0.1:9/"),
    ],
)
def test_broker_urls_are_rewritten_to_the_proxy(url: str, upstream: str, proxied: str):
    assert broker_address(url) == upstream
    assert via_proxy(url, 9) == proxied


def test_free_ports_are_distinct_and_flow_into_the_environment():
    ports = Ports.free()
    assert len(set(ports.all())) == 12
    spec = default_spec(ports, environ={})
    assert spec.env["CONSUL_HTTP_ADDR"] == f"127.0.0.1:{ports.discovery}"
    assert spec.program("order-2").port == ports.order[1]
    assert spec.env["AMQP_URL"] == f"amqp://guest:guest@127.0.0.1:{ports.broker_proxy}/"
    assert spec.env["FAULTPROXY_URL"] == f"http://127.0.0.1:{ports.faultproxy}"
    assert spec.program("faultproxy").port == ports.faultproxy
    assert spec.env["MSA_NAMESPACE"] == ""


def test_config_has_per_program_env_and_no_shared_secrets(tmp_path: Path):
    spec = default_spec(var_dir=tmp_path, environ={"AMQP_URL": "amqp://u:hunter2@h/", "MSA_ADMIN_TOKEN": "tok"})
    topo = Topology(spec)
    text = render_config(spec, topo.socket_path)
    assert "hunter2" not in text and "tok" not in text  # they travel in supervisord's environment instead

    conf = configparser.RawConfigParser()
    conf.read_string(text)
    section = conf["program:catalog-2"]
    assert dict_of_key_value_pairs(section["environment"]) == {
        "HOST": "127.0.0.1",
        "PORT": "8202",
        "INSTANCE_ID": "catalog-2",
    }
    for key, value in {
        "autorestart": "true",
        "startsecs": "1",
        "startretries": "20",
        "stopasgroup": "true",
        "killasgroup": "true",
        "stopsignal": "TERM",
        "stopwaitsecs": "10",
        "redirect_stderr": "true",
        "stdout_logfile": str(tmp_path / "log" / "catalog-2.log"),
    }.items():
        assert section[key] == value, key
    proxies = dict_of_key_value_pairs(conf["program:faultproxy"]["environment"])["FAULTPROXY_PROXIES"]
    assert json.loads(proxies) == [{"name": "rabbitmq", "listen": "127.0.0.1:5673", "upstream": "h:5672"}]
    assert conf["unix_http_server"]["file"] == str(tmp_path / "run" / "supervisor.sock")
    assert conf["supervisord"]["pidfile"] == str(tmp_path / "run" / "supervisord.pid")


def test_awkward_values_survive_supervisords_parsing(tmp_path: Path):
    odd = {"A": "50%, with commas", "B": 'say "hi" twice', "C": ""}
    spec = TopologySpec(
        programs=(Program("p", ("python3", "-c", "print('100%')"), 9999, env=odd),),
        var_dir=tmp_path,
        directory=tmp_path,
        discovery=None,
    )
    conf = configparser.ConfigParser()  # interpolating, as supervisord does
    conf.read_string(render_config(spec, tmp_path / "s.sock"), "supervisord.conf")
    section = conf["program:p"]
    own = {"HOST": "127.0.0.1", "PORT": "9999", "INSTANCE_ID": "p"}
    assert dict_of_key_value_pairs(section["environment"]) == own | odd
    assert section["command"] == "python3 -c 'print('\"'\"'100%'\"'\"')'"


def test_values_supervisord_would_mangle_are_refused(tmp_path: Path):
    spec = TopologySpec(programs=(Program("p", ("true",), 9999, env={"X": '"quoted"'}),), var_dir=tmp_path,
                        directory=tmp_path, discovery=None)
    with pytest.raises(ValueError, match="cannot pass"):
        render_config(spec, tmp_path / "s.sock")


def test_a_long_var_dir_gets_a_short_socket_path(tmp_path: Path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 5)
    spec = TopologySpec(programs=(), var_dir=deep, directory=deep, discovery=None)
    assert len(str(Topology(spec).socket_path)) < 100
    assert Topology(spec).socket_path == Topology(spec).socket_path  # every later command finds the same one


def test_urls_never_show_a_password():
    assert mask_url("amqp://guest:s3cret@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert mask_url("amqp://127.0.0.1/") == "amqp://127.0.0.1/"
