"""Registry objects -> the JSON documents Consul answers with (field names and nesting as Consul spells them)."""

from __future__ import annotations

import base64
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .durations import format_duration
from .registry import Check, HealthEntry, KVEntry, Node, Registry, Service

__all__ = ["node", "agent_service", "health_check", "health_entry", "catalog_service", "kv_entry", "agent_self",
           "member", "VERSION", "LEADER_ADDR"]

VERSION = "1.20.6"  # the Consul version we imitate (the compose stack's image)
REVISION = "msa-disc"  # where Consul puts the first 8 characters of its git commit
BUILD_DATE = "1970-01-01T00:00:01Z"  # Consul's own value for a build that was not stamped with a date
LEADER_ADDR = "127.0.0.1:8300"  # the raft address of the single server: /v1/status/leader, peers, agent/self


def _dur(seconds: float | None) -> str:
    return format_duration(seconds or 0)


def node(n: Node) -> dict[str, Any]:
    tagged = {"lan": n.address, "lan_ipv4": n.address, "wan": n.address, "wan_ipv4": n.address}
    return {"ID": n.id, "Node": n.name, "Address": n.address, "Datacenter": n.datacenter, "TaggedAddresses": tagged,
            "Meta": node_meta(), "CreateIndex": 1, "ModifyIndex": 1}


def node_meta() -> dict[str, str]:
    return {"consul-network-segment": "", "consul-version": VERSION}


def agent_service(s: Service, n: Node) -> dict[str, Any]:
    d = s.definition
    out: dict[str, Any] = {
        "ID": d.id, "Service": d.name, "Tags": list(d.tags), "Meta": dict(d.meta), "Port": d.port,
        "Address": d.address, "Weights": dict(d.weights), "EnableTagOverride": d.enable_tag_override,
        "Datacenter": n.datacenter,
    }
    if d.tagged_addresses:
        out["TaggedAddresses"] = d.tagged_addresses
    return out


def _health_service(s: Service) -> dict[str, Any]:
    d = s.definition
    return {"ID": d.id, "Service": d.name, "Tags": list(d.tags), "Address": d.address, "Meta": dict(d.meta),
            "Port": d.port, "Weights": dict(d.weights), "EnableTagOverride": d.enable_tag_override,
            "TaggedAddresses": d.tagged_addresses or None, "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {}, "CreateIndex": s.create_index, "ModifyIndex": s.modify_index}


def health_check(c: Check, reg: Registry) -> dict[str, Any]:
    d = c.definition
    svc = reg.services.get(d.service_id or "")
    definition: dict[str, Any] = {}
    if d.http:
        definition = {"HTTP": d.http, "Method": d.method, "Header": d.header or None, "TLSSkipVerify": d.tls_skip_verify}
    elif d.tcp:
        definition = {"TCP": d.tcp}
    elif d.ttl:
        definition = {"TTL": _dur(d.ttl)}
    if d.type:
        definition.update(Interval=_dur(d.interval), Timeout=_dur(d.timeout),
                          DeregisterCriticalServiceAfter=_dur(d.deregister_after))
    return {
        "Node": reg.node.name, "CheckID": d.check_id, "Name": d.name, "Status": c.status, "Notes": d.notes,
        "Output": c.output, "ServiceID": d.service_id or "", "ServiceName": svc.name if svc else "",
        "ServiceTags": list(svc.definition.tags) if svc else [], "Type": d.type,
        "Interval": _dur(d.interval) if d.interval else "", "Timeout": _dur(d.timeout) if d.timeout else "",
        "ExposedPort": 0, "Definition": definition, "CreateIndex": c.create_index, "ModifyIndex": c.modify_index,
    }


def health_entry(e: HealthEntry, reg: Registry) -> dict[str, Any]:
    return {"Node": node(e.node), "Service": _health_service(e.service),
            "Checks": [health_check(c, reg) for c in e.checks]}


def catalog_service(s: Service, n: Node) -> dict[str, Any]:
    """Consul's flat catalog row: node fields and Service* fields side by side."""
    d = s.definition
    return {
        "ID": n.id, "Node": n.name, "Address": n.address, "Datacenter": n.datacenter,
        "TaggedAddresses": node(n)["TaggedAddresses"], "NodeMeta": node_meta(),
        "ServiceKind": "", "ServiceID": d.id, "ServiceName": d.name, "ServiceTags": list(d.tags),
        "ServiceAddress": d.address, "ServiceTaggedAddresses": d.tagged_addresses or None,
        "ServiceWeights": dict(d.weights), "ServiceMeta": dict(d.meta), "ServicePort": d.port,
        "ServiceEnableTagOverride": d.enable_tag_override, "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {}, "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
    }


def kv_entry(e: KVEntry) -> dict[str, Any]:
    # Consul stores an empty PUT body as nil, which JSON-encodes as null rather than "".
    value = base64.b64encode(e.value).decode() if e.value else None
    return {"LockIndex": e.lock_index, "Key": e.key, "Flags": e.flags, "Value": value,
            "CreateIndex": e.create_index, "ModifyIndex": e.modify_index}


def member(n: Node) -> dict[str, Any]:
    """The node as a serf LAN member (agent/self's Member, /v1/agent/members): a server, alive."""
    tags = {"acls": "0", "bootstrap": "1", "build": f"{VERSION}:{REVISION}", "dc": n.datacenter, "id": n.id,
            "port": "8300", "raft_vsn": "3", "role": "consul", "segment": "", "vsn": "2", "vsn_max": "3",
            "vsn_min": "2", "wan_join_port": "8302"}
    return {"Name": n.name, "Addr": n.address, "Port": 8301, "Tags": tags,
            "Status": 1,  # serf's StatusAlive
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}


def agent_self(reg: Registry, data_dir: Path | None, http_addr: tuple[str, int] | None) -> dict[str, Any]:
    """GET /v1/agent/self, with Consul's seven top-level keys. Clients read the node name, the datacenter, the
    version and the leader from here (Config, Member, Stats.consul); DebugConfig is Consul's whole runtime config,
    of which we give the part that means something for this registry; xDS says that no Envoy version is supported
    (there is no gRPC/xDS server), where a dev agent lists the Envoy versions it can configure."""
    n = reg.node
    host, port = http_addr or ("127.0.0.1", 8500)
    local_checks = [c for c in reg.checks.values() if c.local]
    return {
        "Config": {"Datacenter": n.datacenter, "PrimaryDatacenter": n.datacenter, "NodeName": n.name,
                   "NodeID": n.id, "Revision": REVISION, "Server": True, "Version": VERSION, "BuildDate": BUILD_DATE},
        "DebugConfig": {
            "Datacenter": n.datacenter, "PrimaryDatacenter": n.datacenter, "NodeName": n.name, "NodeID": n.id,
            "NodeMeta": {}, "ServerMode": True, "Bootstrap": True, "BootstrapExpect": 0,
            "DevMode": data_dir is None, "DataDir": str(data_dir or ""),
            "BindAddr": n.address, "AdvertiseAddrLAN": n.address, "AdvertiseAddrWAN": n.address,
            "ClientAddrs": [host], "HTTPAddrs": [f"tcp://{host}:{port}"], "HTTPPort": port,
            "ServerPort": 8300, "SerfPortLAN": 8301, "SerfPortWAN": 8302, "DNSPort": -1, "GRPCPort": -1,
            "GRPCTLSPort": -1, "HTTPSPort": -1,
            "EnableRemoteScriptChecks": False, "EnableLocalScriptChecks": False, "ACLsEnabled": False,
            "ConnectEnabled": False, "DisableCoordinates": False, "CheckOutputMaxSize": 4096,
            "SegmentName": "", "Revision": REVISION, "Version": VERSION, "VersionPrerelease": "",
            "VersionMetadata": "", "UIConfig": {"Enabled": True, "ContentPath": "/ui/"},
        },
        # A fresh serf coordinate: the origin, with Vivaldi's maximum error (no RTT measured: there are no peers).
        "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
        "Member": member(n),
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": str(sum(1 for c in local_checks if c.definition.ttl)),
                      "checks": str(len(local_checks)),
                      "services": str(sum(1 for s in reg.services.values() if s.local))},
            "build": {"prerelease": "", "revision": REVISION, "version": VERSION, "version_metadata": ""},
            "consul": {"acl": "disabled", "bootstrap": "true", "known_datacenters": "1", "leader": "true",
                       "leader_addr": LEADER_ADDR, "server": "true"},
            # Our "raft index" is the registry's one counter: every write takes the next number.
            "raft": {"state": "Leader", "num_peers": "0", "protocol_version": "3", "term": "2",
                     "last_log_index": str(reg.index), "commit_index": str(reg.index),
                     "applied_index": str(reg.index),
                     "latest_configuration": f"[{{Suffrage:Voter ID:{n.id} Address:{LEADER_ADDR}}}]"},
            "serf_lan": {"members": "1", "failed": "0", "left": "0", "health_score": "0", "encrypted": "false"},
            "runtime": {"os": sys.platform, "arch": platform.machine(), "cpu_count": str(os.cpu_count() or 1),
                        "version": f"python{platform.python_version()}"},
        },
        "Meta": node_meta(),
        "xDS": {"SupportedProxies": {"envoy": []}, "Port": -1, "Ports": {"Plaintext": -1, "TLS": -1}},
    }
