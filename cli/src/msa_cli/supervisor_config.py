"""supervisord.conf for a TopologySpec, and where its control socket lives.

What is in the file is what supervisord needs per program and may be read by anyone: commands, ports, logs. Shared
settings, some of them secret, reach the programs through supervisord's own environment instead (runner.Topology
starts it with them), so they are never written here.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

from .spec import TopologySpec

__all__ = ["render_config", "socket_path"]

# Linux allows 108 bytes in sun_path, macOS 104; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def render_config(spec: TopologySpec, socket_path: Path) -> str:
    """supervisord.conf for a spec. Only per-program, non-secret settings go in here (see the module doc)."""
    log_dir = spec.var_dir / "log"
    run_dir = spec.var_dir / "run"
    supervisorctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(run_dir / "supervisord.conf")]
    out = [
        "; Written by `msa up`, rewritten on every start. To look inside while it runs:",
        ";   " + _esc(shlex.join(supervisorctl)),
        "",
        "[unix_http_server]",
        f"file={_esc(str(socket_path))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_esc(str(log_dir / 'supervisord.log'))}",
        f"pidfile={_esc(str(run_dir / 'supervisord.pid'))}",
        f"childlogdir={_esc(str(log_dir))}",
        f"directory={_esc(str(spec.directory))}",
        "identifier=msa-sandbox",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_esc(str(socket_path))}",
    ]
    for p in spec.programs:
        env = {"HOST": "127.0.0.1", "PORT": str(p.port), "INSTANCE_ID": p.name} | p.env
        out += [
            "",
            f"[program:{p.name}]",
            f"command={_esc(shlex.join(p.command))}",
            f"directory={_esc(str(spec.directory))}",
            f"environment={','.join(f'{k}={_env_value(v)}' for k, v in env.items())}",
            f"priority={p.priority}",
            "autostart=true",
            "autorestart=true",
            # RUNNING after 1 s alive; a crash-looping program gets 20 tries before supervisord gives up (FATAL).
            "startsecs=1",
            "startretries=20",
            # Signal the whole process group, so nothing a program spawned outlives it.
            "stopasgroup=true",
            "killasgroup=true",
            "stopsignal=TERM",
            "stopwaitsecs=10",
            "redirect_stderr=true",
            f"stdout_logfile={_esc(str(log_dir / f'{p.name}.log'))}",
        ]
    return "\n".join(out) + "\n"


def socket_path(run_dir: Path) -> Path:
    """The unix socket supervisord listens on for a run directory: inside it, unless that path is too long."""
    preferred = run_dir / "supervisor.sock"
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    # Too long for a unix socket address: a short directory derived from the var dir, so every later command
    # finds the same one without having to be told.
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(os.environ.get("TMPDIR", "."))
    return base / f"msa-{digest}" / "supervisor.sock"


def _esc(value: str) -> str:
    # supervisord expands %(name)s in its config, so a literal % must be doubled.
    return value.replace("%", "%%")


def _env_value(value: str) -> str:
    # supervisord splits `environment=` with a non-POSIX shlex: quotes group, nothing escapes a quote, and it
    # strips quote characters from both ends of the value. Anything it would mangle is refused here instead.
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"') or ('"' in value and "'" in value):
        raise ValueError(f"supervisord cannot pass this environment value unchanged: {value!r}")
    quote = "'" if '"' in value else '"'
    return _esc(f"{quote}{value}{quote}")
