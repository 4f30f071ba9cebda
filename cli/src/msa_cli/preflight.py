"""Checks made before anything starts, so a failure is one clear sentence instead of seven crash-looping processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from urllib.parse import urlsplit, urlunsplit

import aio_pika


def mask_url(url: str) -> str:
    """The URL with its password replaced: secrets are never printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def broker_problem(url: str, timeout: float = 3.0) -> str | None:
    """None when an AMQP connection opens; otherwise a message saying where we looked and what to do.

    Opens a real AMQP connection rather than probing the port: RabbitMQ listens (and `rabbitmq-diagnostics ping`
    succeeds) seconds before it accepts connections (DESIGN §7).
    """

    async def probe() -> None:
        conn = await aio_pika.connect(url, timeout=timeout)
        await conn.close()

    # aiormq logs the failed attempt itself; our message below says it once, better.
    quiet = [logging.getLogger(name) for name in ("aio_pika", "aiormq")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        asyncio.run(asyncio.wait_for(probe(), timeout + 1))
        return None
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the answer is the same advice
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        return (
            f"RabbitMQ is not reachable at {mask_url(url)} ({reason}).\n"
            "Start one, then run this again:\n"
            "  rabbitmq-server -detached                           (Debian/Ubuntu: apt-get install rabbitmq-server)\n"
            "  docker run -d -p 5672:5672 rabbitmq:4-management    (with Docker)\n"
            "Or set AMQP_URL to use another broker, e.g. AMQP_URL=amqp://user:password@host:5672/"
        )
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port (a bind test, as the servers themselves will bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like uvicorn: a port whose old connections linger in TIME_WAIT is free; only a listener blocks the bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def ports_in_use(ports: list[int]) -> list[int]:
    return [p for p in ports if port_in_use(p)]
