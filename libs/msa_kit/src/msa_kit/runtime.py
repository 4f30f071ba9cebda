"""Where a process is and who it is: the few facts that come from its environment, never from the config server.

Spring calls these bootstrap properties: enough to find the config server and the registry. Everything else
(timeouts, seed data, feature values) is fetched from the config server in bootstrap (see settings.py).
"""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Runtime(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    service: str = Field("", description="Logical service name; set by the service's bootstrap, not the env")
    instance_id: str = Field("", validation_alias="INSTANCE_ID")
    host: str = Field("127.0.0.1", validation_alias="HOST", description="the address to listen on")
    advertise_host: str = Field("", validation_alias="ADVERTISE_HOST",
                                description="the address others reach this instance at, as registered in "
                                            "discovery (a container's name); unset: HOST")
    port: int = Field(0, validation_alias="PORT")
    consul_http_addr: str = Field("127.0.0.1:8500", validation_alias="CONSUL_HTTP_ADDR")
    consul_http_token: SecretStr = Field(SecretStr(""), validation_alias="CONSUL_HTTP_TOKEN",
                                         description="this program's ACL token (compose, Kubernetes: "
                                                     "msa_kit.access); unset: none, as local mode's registry needs")
    config_server_url: str = Field("", validation_alias="CONFIG_SERVER_URL",
                                   description="unset: find `config-server` in discovery")
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", validation_alias="AMQP_URL")
    var_dir: Path = Field(Path("var"), validation_alias="MSA_VAR_DIR")
    namespace: str = Field("", validation_alias="MSA_NAMESPACE", description="Prefix of broker names (tests)")
    profile: str = Field("local", validation_alias="MSA_PROFILE")
    database_url: str = Field("", validation_alias="DATABASE_URL",
                              description="unset: <SERVICE>_DATABASE_URL (local mode's shared environment), "
                                          "else a SQLite file under the var dir")

    @classmethod
    def for_service(cls, service: str) -> "Runtime":
        rt = cls()
        rt.service = service
        if not rt.instance_id:
            # A replica that compose's `--scale` made has no id of its own in its environment: its container's
            # hostname is one (on one machine, the port is).
            rt.instance_id = f"{service}-{socket.gethostname() if rt.listens_everywhere else rt.port}"
        if not rt.database_url:
            rt.database_url = os.environ.get(f"{service.upper().replace('-', '_')}_DATABASE_URL", "")
        rt.var_dir = rt.var_dir.resolve()
        return rt

    @property
    def listens_everywhere(self) -> bool:
        return self.host in ("0.0.0.0", "::", "")

    @property
    def address(self) -> str:
        """Where other programs reach this instance (what discovery lists): ADVERTISE_HOST; else, listening on every
        address (a container), this host's own address on its network; else HOST."""
        if self.advertise_host:
            return self.advertise_host
        if self.listens_everywhere:
            try:
                return socket.gethostbyname(socket.gethostname())
            except OSError:
                return "127.0.0.1"
        return self.host

    @property
    def local_host(self) -> str:
        """Where this process reaches its own listener: HOST, or loopback when it listens on every address."""
        return "127.0.0.1" if self.listens_everywhere else self.host

    @property
    def consul_host_port(self) -> tuple[str, int]:
        addr = self.consul_http_addr.removeprefix("http://").removeprefix("https://").rstrip("/")
        host, _, port = addr.rpartition(":")
        return (host or "127.0.0.1", int(port or 8500))

    @property
    def consul_headers(self) -> dict[str, str]:
        token = self.consul_http_token.get_secret_value()
        return {"X-Consul-Token": token} if token else {}

    def path(self, *parts: str) -> Path:
        """A path under the var dir, created on demand (runtime state never lives in the tree)."""
        p = self.var_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def started() -> None:
    """Call once a process has finished starting: everything built so far (~150k objects — modules, pydantic
    models, the OpenTelemetry SDK) lives as long as the process. Left in the collector's oldest generation, every
    full collection walks all of them: measured 120-140 ms with the event loop stopped, about once a second under
    load (the gateway's p99). Frozen, a collection walks only what requests allocate."""
    gc.freeze()
