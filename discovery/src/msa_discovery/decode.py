"""Turn a registration body into definitions, accepting what Consul accepts.

Consul decodes JSON field names case-insensitively and also takes snake_case aliases ("Name", "name",
"deregister_critical_service_after"...), which is why py-consul can send lowercase keys. We get the same effect
by normalising field names (lowercase, no underscores) — but only field names: the keys inside Meta and Header
are user data and keep their spelling.
"""

from __future__ import annotations

import re
from typing import Any

from .durations import parse_duration
from .registry import CRITICAL, STATUSES, CheckDefinition, ServiceDefinition

__all__ = ["DecodeError", "ScriptChecksDisabled", "service_registration", "check_registration", "fields"]

_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Script checks ("Args", or "script_args"): refused as Consul refuses them with its default enable_script_checks=false.
_SCRIPT = ("args", "scriptargs")
# Check kinds Consul has that this registry does not run: refused rather than silently left critical forever.
_UNSUPPORTED = ("script", "grpc", "dockercontainerid", "h2ping", "udp", "aliasservice", "aliasnode", "osservice")


class DecodeError(ValueError):
    """A 400 with Consul's wording."""

    status = 400


class ScriptChecksDisabled(DecodeError):
    """A script check sent over the HTTP API. Consul (and `consul agent -dev`) ship with `enable_script_checks`
    false, and then refuse it after validating it, with this error and a 500 (it is the agent's AddCheck failing,
    not the decoding). Nothing is registered: neither the check nor, for a service registration, the service."""

    status = 500

    def __init__(self) -> None:
        super().__init__("Scripts are disabled on this agent from remote calls; to enable, configure "
                         "'enable_script_checks' to true")


def fields(obj: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DecodeError(f"Request decode failed: {what} must be a JSON object, got {type(obj).__name__}")
    return {str(k).replace("_", "").lower(): v for k, v in obj.items()}


def _str(f: dict[str, Any], key: str, default: str = "") -> str:
    v = f.get(key)
    if v is None:
        return default
    if not isinstance(v, str):
        raise DecodeError(f"Request decode failed: {key} must be a string")
    return v


def _duration(f: dict[str, Any], key: str) -> float | None:
    v = f.get(key)
    if v in (None, ""):
        return None
    if isinstance(v, bool):
        raise DecodeError(f"Request decode failed: {key} must be a duration")
    if isinstance(v, (int, float)):
        return v / 1e9  # Go decodes a bare number into a time.Duration as nanoseconds
    if not isinstance(v, str):
        raise DecodeError(f"Request decode failed: {key} must be a duration")
    try:
        return parse_duration(v)
    except ValueError as e:
        raise DecodeError(f"Request decode failed: {e}") from None


def _check(f: dict[str, Any], check_id: str, name: str, service_id: str | None) -> tuple[CheckDefinition, bool]:
    """One check's fields (already normalised) -> (its definition, whether it is a script check)."""
    if any(f.get(k) for k in _UNSUPPORTED):
        raise DecodeError("Invalid check: only TTL, HTTP and TCP checks are supported by msa-discovery")
    script = any(f.get(k) for k in _SCRIPT)
    if script and not isinstance(f.get("args") or f.get("scriptargs"), list):
        raise DecodeError("Request decode failed: Args must be a list of strings")
    ttl, interval = _duration(f, "ttl"), _duration(f, "interval")
    http, tcp = _str(f, "http") or None, _str(f, "tcp") or None
    probed = bool(script or http or tcp)
    # Consul's CheckType.Validate, message for message.
    if interval and ttl:
        raise DecodeError("Invalid check: Interval and TTL cannot both be specified")
    if probed and not interval:
        raise DecodeError("Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if not probed and not (ttl and ttl > 0):
        raise DecodeError("Invalid check: TTL must be > 0 for TTL checks")
    status = _str(f, "status") or CRITICAL
    if status not in STATUSES:
        raise DecodeError("Status for checks must 'passing', 'warning', 'critical'")
    header = f.get("header") or {}
    if not isinstance(header, dict) or not all(isinstance(v, list) for v in header.values()):
        raise DecodeError("Request decode failed: Header must be a map of string to list of strings")
    timeout = _duration(f, "timeout")
    if http and timeout is None:
        timeout = min(10.0, interval or 10.0)  # Consul: 10s, or the interval if that is shorter
    return CheckDefinition(
        check_id=check_id,
        name=name,
        service_id=service_id,
        ttl=ttl, http=http, tcp=tcp, interval=interval, timeout=timeout or (interval if tcp else None),
        method=_str(f, "method") or "GET",
        header={str(k): [str(x) for x in v] for k, v in header.items()},
        tls_skip_verify=bool(f.get("tlsskipverify")),
        deregister_after=_duration(f, "deregistercriticalserviceafter"),
        notes=_str(f, "notes"),
        initial_status=status,  # type: ignore[arg-type]
    ), script


def service_registration(body: Any) -> tuple[ServiceDefinition, list[CheckDefinition]]:
    """The body of PUT /v1/agent/service/register -> (service, its checks)."""
    f = fields(body)
    name = _str(f, "name") or _str(f, "service")
    if not name:
        raise DecodeError("Missing service name")
    port = f.get("port") or 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise DecodeError("Request decode failed: Port must be an integer between 0 and 65535")
    tags = f.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DecodeError("Request decode failed: Tags must be a list of strings")
    meta = f.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DecodeError("Request decode failed: Meta must be a map of string to string")
    for k in meta:
        if not _META_KEY.match(k):
            raise DecodeError(f"Invalid Service Meta: Key contains invalid characters or is too long: {k!r}")
        if k.startswith("consul-"):
            raise DecodeError(f"Invalid Service Meta: Key prefix 'consul-' is reserved for internal use: {k!r}")
    weights = fields(f.get("weights") or {"Passing": 1, "Warning": 1}, "Weights")
    if not all(isinstance(weights.get(k, 1), int) for k in ("passing", "warning")):
        raise DecodeError("Request decode failed: Weights must be integers")
    service = ServiceDefinition(
        id=_str(f, "id") or name, name=name, address=_str(f, "address"), port=port, tags=tuple(tags), meta=dict(meta),
        weights={"Passing": int(weights.get("passing", 1)), "Warning": int(weights.get("warning", 1))},
        enable_tag_override=bool(f.get("enabletagoverride")),
        tagged_addresses=f.get("taggedaddresses") or {},
    )
    check, extra = f.get("check"), f.get("checks")
    if check is not None and not isinstance(check, dict):
        raise DecodeError("Request decode failed: Check must be a JSON object")
    if extra is not None and not isinstance(extra, list):
        raise DecodeError("Request decode failed: Checks must be a list")
    raw_checks: list[Any] = ([check] if check else []) + (extra or [])  # an empty Check {} means none, as in Consul
    # Consul's ids: "service:<id>" for a lone check, "service:<id>:1", ":2"... when there are several.
    ids = [f"service:{service.id}"] if len(raw_checks) == 1 else \
        [f"service:{service.id}:{i}" for i in range(1, len(raw_checks) + 1)]
    checks = []
    for raw, default_id in zip(raw_checks, ids):
        cf = fields(raw, "check")
        checks.append(_check(cf, _str(cf, "checkid") or _str(cf, "id") or default_id,
                             _str(cf, "name") or f"Service '{service.name}' check", service.id))
    if any(script for _, script in checks):  # every check is validated first, as Consul's CheckTypes() does
        raise ScriptChecksDisabled()
    return service, [d for d, _ in checks]


def check_registration(body: Any) -> tuple[CheckDefinition, bool]:
    """The body of PUT /v1/agent/check/register -> (the check, whether it is a script check).

    Consul decodes it as a CheckDefinition: the id is `ID` (not `CheckID`, which it ignores there) and defaults to
    the name; `ServiceID` ties the check to an instance, and without one the check is the node's. The caller checks
    that the instance exists (a 404) before refusing a script check (a 500), in Consul's order."""
    f = fields(body)
    name = _str(f, "name")
    if not name:
        raise DecodeError("Missing check name")
    if (_str(f, "status") or CRITICAL) not in STATUSES:
        raise DecodeError("Bad check status")
    service_id = _str(f, "serviceid") or None
    return _check(f, _str(f, "id") or name, name, service_id)
