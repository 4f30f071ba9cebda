"""Typed settings whose values come from the config server (Spring Cloud Config API), environment overriding.

Precedence, highest first: environment variables (12-factor; nested with `__`, e.g. `CATALOG__SEED`), the config
server's property sources (already ordered by Spring's rules on the server), then the class defaults.
Fetched once in bootstrap, never at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .runtime import Runtime

log = logging.getLogger(__name__)

_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config server's document arrives as init kwargs; the environment must still win over it.
        return (env_settings, init_settings)


S = TypeVar("S", bound=ServiceSettings)


class ConfigUnavailable(RuntimeError):
    pass


@dataclass
class ConfigSnapshot:
    """What the config server said, kept so a later start can survive the server being down."""

    application: str
    profile: str
    version: str | None
    source: str  # "config-server" or "snapshot"
    properties: dict[str, Any] = field(default_factory=dict)  # flat, Spring-style keys

    def nested(self) -> dict[str, Any]:
        return unflatten(self.properties)


def merge_property_sources(env_doc: dict[str, Any]) -> dict[str, Any]:
    """Spring's rule: the first property source that has a key wins."""
    merged: dict[str, Any] = {}
    for ps in env_doc.get("propertySources", []):
        for key, value in ps.get("source", {}).items():
            merged.setdefault(key, value)
    return merged


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """`a.b[0].c = 1` → {"a": {"b": [{"c": 1}]}}; the inverse of what Spring's server does to YAML."""
    root: dict[str, Any] = {}
    for key, value in sorted(flat.items(), key=lambda kv: kv[0]):
        if key.startswith("invalid."):
            continue
        node: Any = root
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            m = _INDEX.match(part)
            name, index = (m.group(1), int(m.group(2))) if m else (part, None)
            if index is None:
                if last:
                    node[name] = value
                else:
                    node = node.setdefault(name, {})
                continue
            seq = node.setdefault(name, [])
            while len(seq) <= index:
                seq.append(None)
            if last:
                seq[index] = value
            else:
                if seq[index] is None:
                    seq[index] = {}
                node = seq[index]
    return root


def _snapshot_path(rt: Runtime) -> Path:
    return rt.path("config", f"{rt.service}-{rt.profile}.json")


def save_snapshot(rt: Runtime, snap: ConfigSnapshot) -> None:
    """Keep the last configuration that validated, for a start while the config server is down."""
    path = _snapshot_path(rt)
    # Instances of a service share the var dir and often refresh at the same moment: a temp file of their own.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**snap.__dict__, "source": "config-server"}))
    tmp.replace(path)


async def fetch_config(rt: Runtime, *, attempts: int | None = None, fallback: bool = True) -> ConfigSnapshot:
    """Ask the config server, retrying with backoff (Spring's `spring.cloud.config.retry`: 6 attempts, 1 s → 2 s by
    default; `CONFIG_RETRY_MAX_ATTEMPTS` changes it); then fall back loudly to the last good snapshot under var/."""
    path = f"/{rt.service}/{rt.profile}"
    url = rt.config_server_url.rstrip("/") + path if rt.config_server_url else f"discovery:config-server{path}"
    attempts = attempts or int(os.environ.get("CONFIG_RETRY_MAX_ATTEMPTS", "6"))
    delay = 0.25
    last_error = ""
    async with httpx.AsyncClient(timeout=3.0) as http:
        for attempt in range(1, attempts + 1):
            try:
                base = rt.config_server_url.rstrip("/") or await _discover_config_server(http, rt)
                r = await http.get(base + path)
                r.raise_for_status()
                doc = r.json()
                return ConfigSnapshot(rt.service, rt.profile, doc.get("version"), "config-server",
                                      merge_property_sources(doc))
            except (httpx.HTTPError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.info("config server not ready (attempt %d/%d): %s", attempt, attempts, last_error)
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
    snapshot_path = _snapshot_path(rt)
    if fallback and snapshot_path.exists():
        data = json.loads(snapshot_path.read_text())
        data["source"] = "snapshot"
        log.warning("CONFIG SERVER UNREACHABLE at %s (%s): starting from the last good snapshot %s (version %s)",
                    url, last_error, snapshot_path, data.get("version"))
        return ConfigSnapshot(**data)
    where = f" and no snapshot at {snapshot_path}" if fallback else ""
    raise ConfigUnavailable(f"config server unreachable at {url} ({last_error}){where}")


async def _discover_config_server(http: httpx.AsyncClient, rt: Runtime) -> str:
    host, port = rt.consul_host_port
    r = await http.get(f"http://{host}:{port}/v1/health/service/config-server", params={"passing": "1"},
                       headers=rt.consul_headers)
    r.raise_for_status()
    entries = r.json()
    if not entries:
        raise httpx.HTTPError("no passing config-server instance in discovery")
    svc = random.choice(entries)["Service"]
    return f"http://{svc['Address'] or '127.0.0.1'}:{svc['Port']}"


def build_settings(cls: type[S], snapshot: ConfigSnapshot) -> S:
    """The service's own section (`<service>:` in YAML) plus the shared top level, typed by `cls`."""
    nested = snapshot.nested()
    return cls(**nested)
