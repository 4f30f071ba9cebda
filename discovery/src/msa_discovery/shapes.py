"""Registry objects -> the JSON documents Consul answers with (field names and nesting as Consul spells them)."""

from __future__ import annotations

import base64
from typing import Any

from .durations import format_duration
from .registry import Check, HealthEntry, KVEntry, Node, Registry, Service

__all__ = ["node", "agent_service", "health_check", "health_entry", "catalog_service", "kv_entry", "agent_self"]

VERSION = "1.20.0"  # the Consul API version we imitate


def _dur(seconds: float | None) -> str:
    return format_duration(seconds or 0)


def node(n: Node) -> dict[str, Any]:
    tagged = {"lan": n.address, "lan_ipv4": n.address, "wan": n.address, "wan_ipv4": n.address}
    return {"ID": n.id, "Node": n.name, "Address": n.address, "Datacenter": n.datacenter, "TaggedAddresses": tagged,
            "Meta": {"consul-network-segment": ""}, "CreateIndex": 1, "ModifyIndex": 1}


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
        "TaggedAddresses": node(n)["TaggedAddresses"], "NodeMeta": {"consul-network-segment": ""},
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


def agent_self(n: Node) -> dict[str, Any]:
    return {
        "Config": {"Datacenter": n.datacenter, "PrimaryDatacenter": n.datacenter, "NodeName": n.name,
                   "NodeID": n.id, "Server": True, "Revision": "msa-discovery", "Version": VERSION,
                   "BuildDate": "", "PartitionOrEmpty": ""},
        "Member": {"Name": n.name, "Addr": n.address, "Port": 8301,
                   "Tags": {"dc": n.datacenter, "id": n.id, "role": "consul", "port": "8300", "build": VERSION,
                            "bootstrap": "1", "vsn": "2"},
                   "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                   "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4},
        "Meta": {"consul-network-segment": ""},
        "Stats": {"consul": {"server": "true", "leader": "true", "known_datacenters": "1"}},
    }
