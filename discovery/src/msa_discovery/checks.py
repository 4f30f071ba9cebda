"""What the registry does on its own: probe HTTP/TCP checks, expire TTLs, reap long-critical instances.

One supervisor task sleeps until the next deadline the registry reports (a TTL running out, an instance due for
reaping) or until any write, whichever comes first; then it lets the registry apply what is due and starts or
stops one probe task per HTTP/TCP check so the running probes always match the registered checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from .registry import CRITICAL, PASSING, WARNING, CheckDefinition, Registry, Status

__all__ = ["CheckRunner", "probe_http", "probe_tcp"]

log = logging.getLogger("msa_discovery")
OUTPUT_MAX = 4096  # Consul keeps at most 4 KiB of a check's output


async def probe_http(client: httpx.AsyncClient, d: CheckDefinition) -> tuple[Status, str]:
    """Consul's rule: 2xx passing, 429 Too Many Requests warning, anything else (or no answer) critical."""
    assert d.http
    headers = {"User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"}
    headers.update({k: ", ".join(v) for k, v in d.header.items()})
    try:
        async with client.stream(d.method, d.http, headers=headers, timeout=d.timeout) as resp:
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) >= OUTPUT_MAX:
                    break
    except httpx.TimeoutException:
        return CRITICAL, f'{d.method} "{d.http}": context deadline exceeded (Client.Timeout exceeded)'
    except Exception as e:  # any failure to get an answer (refused, bad URL, TLS...) is the target's problem
        return CRITICAL, f'{d.method} "{d.http}": {type(e).__name__}: {e}'
    output = (f"HTTP {d.method} {d.http}: {resp.status_code} {resp.reason_phrase} Output: "
              f"{body[:OUTPUT_MAX].decode('utf-8', 'replace')}")
    status: Status = PASSING if 200 <= resp.status_code < 300 else WARNING if resp.status_code == 429 else CRITICAL
    return status, output


async def probe_tcp(d: CheckDefinition) -> tuple[Status, str]:
    assert d.tcp
    host, _, port = d.tcp.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), d.timeout or 10)
    except (OSError, ValueError, TimeoutError) as e:
        return CRITICAL, f"dial tcp {d.tcp}: {type(e).__name__}: {e}"
    writer.close()
    return PASSING, f"TCP connect {d.tcp}: Success"


class CheckRunner:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._clients: dict[bool, httpx.AsyncClient] = {}
        self._probes: dict[str, tuple[CheckDefinition, asyncio.Task[None]]] = {}

    def _client(self, verify: bool) -> httpx.AsyncClient:
        if verify not in self._clients:
            self._clients[verify] = httpx.AsyncClient(verify=verify, follow_redirects=True)
        return self._clients[verify]

    async def run(self) -> None:
        while True:
            try:
                next_due = self.registry.tick()
                self._reconcile()
            except Exception:  # a bug here must not stop health checking altogether
                log.exception("check runner iteration failed")
                next_due = self.registry.now() + 1
            timeout = None if next_due is None else max(0.0, next_due - self.registry.now())
            await self.registry.wait_changed(timeout)

    def _reconcile(self) -> None:
        wanted = {c.id: c.definition for c in self.registry.checks.values() if c.definition.http or c.definition.tcp}
        for cid, (d, task) in list(self._probes.items()):
            if wanted.get(cid) is not d:  # removed, or replaced by a re-registration
                task.cancel()
                del self._probes[cid]
        for cid, d in wanted.items():
            if cid not in self._probes:
                self._probes[cid] = (d, asyncio.create_task(self._probe_loop(d), name=f"probe {cid}"))

    async def _probe_loop(self, d: CheckDefinition) -> None:
        # Consul waits a random fraction of the interval before the first probe (to spread load); we probe at
        # once, so a freshly registered instance becomes passing as soon as it can.
        while True:
            if d.http:
                status, output = await probe_http(self._client(not d.tls_skip_verify), d)
            else:
                status, output = await probe_tcp(d)
            self.registry.record_result(d, status, output)
            await asyncio.sleep(d.interval or 10)

    async def aclose(self) -> None:
        for _, task in self._probes.values():
            task.cancel()
        for _, task in self._probes.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probes.clear()
        for client in self._clients.values():
            await client.aclose()
