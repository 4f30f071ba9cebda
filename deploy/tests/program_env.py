"""What the compose and Kubernetes checks share: which settings class each program builds from its environment,
and how to tell whether a variable is one a program reads."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the workspace venv: docker-compose, check-jsonschema, hadolint, kubectl, ...

# A program service's command module → the settings class its bootstrap builds from the environment.
SETTINGS = {
    "user": "user.bootstrap:UserSettings",
    "catalog": "catalog.bootstrap:CatalogSettings",
    "order": "order.bootstrap:OrderSettings",
    "msa_gateway": "msa_gateway.app:GatewaySettings",
    "msa_probe": "msa_probe.bootstrap:ProbeSettings",
    "msa_console": "msa_console.bootstrap:ConsoleSettings",
}
# Variables read by libraries or straight from os.environ rather than a settings class. Each non-OTEL name must
# still be read somewhere in our sources (checked below), so a rename on either side fails here.
LIBRARY_ENV = {"PYTHONUNBUFFERED": None, "MSA_VERSION": "libs/msa_kit/src/msa_kit/platform.py",
               "FAULTPROXY_URL": "console/src/msa_console/bootstrap.py"}
LIBRARY_PREFIXES = ("OTEL_",)  # the OpenTelemetry SDK's own environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_BSP_*)


def settings_class(module: str) -> type[BaseModel]:
    mod, _, cls = SETTINGS[module].partition(":")
    return getattr(importlib.import_module(mod), cls)


def known_to(model: type[BaseModel], key: str) -> bool:
    """`ADMIN__TOKEN` is known to a settings class with a model field `admin` that has a field `token`."""
    node: Any = model
    for part in key.lower().split("__"):
        fields = getattr(node, "model_fields", None)
        if fields is None:
            return node is dict or getattr(node, "__origin__", None) is dict  # a dict field takes any key
        if part not in fields:
            return False
        node = fields[part].annotation
    return True


def config_server_variables() -> set[str]:
    """The config server reads its environment by hand; its names are whatever its __main__ asks os.environ for."""
    source = (ROOT / "config-server/src/msa_config_server/__main__.py").read_text()
    return set(re.findall(r"os\.environ\.get\(\"(\w+)\"", source))
