"""Reading docker-compose.yml as the CLI needs it, without the compose plugin or an engine: its services with YAML
anchors merged and compose's variables interpolated, the ports they publish, the environment they get, and the
variables themselves (the environment first, then the `.env` beside the compose file, as compose reads them).

compose.ComposeTopology turns what is read here into a TopologySpec and runs the stack.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from .errors import TopologyError
from .spec import DEMO_ADMIN_TOKEN, repo_root

__all__ = [
    "admin_token",
    "command_module",
    "compose_environ",
    "compose_file",
    "interpolate",
    "load_model",
    "published_ports",
    "read_dotenv",
    "registers_as",
    "service_env",
]


def compose_file(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("MSA_COMPOSE_FILE") or repo_root() / "docker-compose.yml").resolve()


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines of a .env file ({} if there is none): python-dotenv's reading when it is installed."""
    if not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - python-dotenv is in the lock; this keeps the CLI working without it
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.removeprefix("export ").partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            else:
                value = value.split(" #", 1)[0].strip()
            values[key.strip()] = value
        return values
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def compose_environ(file: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables the compose file is interpolated with: the environment wins over `.env`, as in compose."""
    environ = dict(os.environ if environ is None else environ)
    file = file or compose_file(environ)
    return read_dotenv(file.parent / ".env") | environ


def admin_token(environ: dict[str, str] | None = None, file: Path | None = None) -> str:
    """The admin token of the compose stack: MSA_ADMIN_TOKEN from the environment, else from `.env`, else the
    demo value the compose file defaults to (`${MSA_ADMIN_TOKEN:-sandbox-admin-token}`)."""
    return compose_environ(file, environ).get("MSA_ADMIN_TOKEN") or DEMO_ADMIN_TOKEN


# ---- reading the compose file -------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable syntax ($VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:+alt}, $$), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), interpolate(m.group(4) or "", env)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":+", "+"):
            return "" if unset else arg
        if op in (":?", "?") and unset:
            raise TopologyError(f"docker-compose.yml needs ${name}: {arg or 'it is not set'}")
        return current or ""

    return _VAR.sub(sub, value)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, published port, container port) of each TCP port a service publishes (short or long syntax)."""
    out = []
    for spec in service.get("ports") or []:
        if isinstance(spec, dict):
            if spec.get("protocol", "tcp") != "tcp" or not spec.get("published"):
                continue
            out.append((spec.get("host_ip") or "0.0.0.0", int(spec["published"]), int(spec["target"])))
            continue
        text, _, proto = str(spec).partition("/")
        if proto not in ("", "tcp"):
            continue
        parts = text.rsplit(":", 2)
        if len(parts) == 1:
            continue  # only a container port: published on a random one, not ours to know
        host_ip = parts[0].strip("[]") if len(parts) == 3 else "0.0.0.0"
        published, target = parts[-2], parts[-1]
        if "-" in published or "-" in target:
            continue  # ranges: not used for programs
        out.append((host_ip, int(published), int(target)))
    return out


def command_module(command: Any) -> str | None:
    """`python -m catalog` → catalog."""
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command or []]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    return None


def registers_as(module: str | None) -> tuple[str, ...]:
    """The discovery service name a program registers under, from its module (msa_gateway → gateway). The config
    server registers too (as `config-server`), but like local mode's spec its readiness is its /health and it has no
    admin fault API, so it is not counted among the registered programs."""
    if not module or module == "msa_config_server":
        return ()
    return (module.removeprefix("msa_").replace("_", "-"),)


def load_model(file: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file, YAML anchors merged and variables interpolated (the parts of `docker compose config` the
    CLI relies on, without needing the compose plugin)."""
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise TopologyError(f"cannot read the compose file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise TopologyError(f"{file} has no `services:`; is it a compose file?")
    env = compose_environ(file, environ)
    return {"name": interpolate(raw.get("name"), env),
            "services": {name: interpolate(svc or {}, env) for name, svc in raw["services"].items()}}
