"""Service-to-service calls: the kit's stack on its own HTTP/1.1 client, and on a maintained one (issue #17).

The same composition a service calls through (`msa_kit.resilience.service_client`: tracing → bulkhead → breaker →
retry → balancing → HTTP/1.1), once over `msa_kit.http1.Http1Transport` (today's) and once with the bottom layer
swapped for httpx-aiohttp's `AiohttpTransport` (httpx's API over aiohttp's client). Both call one backend endpoint
(`GET /item`, small JSON: a FastAPI app in one uvicorn process, uvloop + httptools, like a service) by a closed
loop of 16 callers in this process for a fixed count of calls; the variants alternate run by run. Figures: calls/s,
and the CPU time of the calling process per call (process time, so the backend's and the machine's other load
count less).

It also checks, once, what each transport raises in the three failures the guards judge (msa_kit.resilience): a
refused connection (must be httpx.ConnectError: the balancer fails over), an upstream that never answers (a
TimeoutException: UpstreamTimeout, 504), and one that closes the connection without answering (a ReadError or
RemoteProtocolError: retried when idempotent, else 502 — not a time-out).

Usage: .venv/bin/python bench/client_bench.py [--quick]   (127.0.0.1 free ports; leaves nothing running)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

CALLERS = 16
VARIANTS = ("kit", "aiohttp")  # msa_kit.http1.Http1Transport; httpx_aiohttp.AiohttpTransport


def serve_backend(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/item")
    async def item() -> dict[str, object]:
        return {"id": 42, "name": "a benchmark item", "tags": ["small", "json"], "price": 9.99}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning")


class StaticDiscovery:
    """What the balancer asks of discovery, for fixed instances."""

    def __init__(self, instances: dict[str, list]) -> None:  # type: ignore[type-arg]
        self._instances, self.watchers = instances, {}

    async def instances(self, service: str) -> list:  # type: ignore[type-arg]
        return self._instances.get(service, [])


def stack(variant: str, instances: dict[str, list],  # type: ignore[type-arg]
          timeout_s: float = 2.0) -> httpx.AsyncClient:
    from msa_kit.resilience import Policies, ResilientStack, service_client

    s = ResilientStack(StaticDiscovery(instances), Policies())  # type: ignore[arg-type]
    if variant == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        s.balancing.inner = AiohttpTransport(limits=httpx.Limits(max_connections=200))
    return service_client(s, timeout_s=timeout_s)


async def one_run(variant: str, port: int, calls: int) -> tuple[float, float]:
    """(calls/s, CPU µs per call) for `calls` calls by CALLERS concurrent callers."""
    from msa_kit.discovery import Instance

    client = stack(variant, {"bench": [Instance("bench-1", "127.0.0.1", port)]})
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            r = await client.get("http://bench/item")
            assert r.status_code == 200 and r.json()["id"] == 42, r

    for _ in range(2 * CALLERS):  # warm: connections open, code paths hot
        assert (await client.get("http://bench/item")).status_code == 200
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await client.aclose()
    return calls / wall, cpu / calls * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def failure_mapping(variant: str) -> dict[str, str]:
    """What the stack raises (or returns) per failure, through the balancer: the kind the guards see."""
    from msa_kit.discovery import Instance

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(5)  # reads nothing, answers nothing
        except asyncio.CancelledError:
            pass
        writer.close()

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # the request was read; no answer

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (silent, hang_up, ok)]
    silent_port, hang_port, ok_port = (s.sockets[0].getsockname()[1] for s in servers)
    refused = free_port()
    out: dict[str, str] = {}
    cases = {"refused, then a healthy instance": [Instance("dead", "127.0.0.1", refused),
                                                   Instance("ok", "127.0.0.1", ok_port)],
             "never answers (0.3 s time-out)": [Instance("slow", "127.0.0.1", silent_port)],
             "closes without answering (POST)": [Instance("hang", "127.0.0.1", hang_port)]}
    for case, instances in cases.items():
        client = stack(variant, {"x": instances}, timeout_s=0.3)
        try:
            if case.startswith("refused"):  # round robin starts at the dead one: the balancer must move on
                r = await client.get("http://x/")
                out[case] = f"answered {r.status_code}"
            else:
                r = await client.post("http://x/", content=b"{}") if "POST" in case else await client.get("http://x/")
                out[case] = f"answered {r.status_code}"
        except Exception as exc:  # noqa: BLE001 (the point is which one)
            cause = exc.__cause__
            out[case] = type(exc).__name__ + (f" ← {type(cause).__name__}" if cause else "")
        finally:
            await client.aclose()
    for s in servers:
        s.close()
    return out


def measure(quick: bool) -> tuple[dict[str, list[tuple[float, float]]], dict[str, dict[str, str]]]:
    import uvloop

    port = free_port()
    backend = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-backend", str(port)],
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/item", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or backend.poll() is not None:
                    raise
                time.sleep(0.1)
        runs, calls = (1, 1_000) if quick else (3, 5_000)
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for run in range(runs):
            for variant in VARIANTS:
                results[variant].append(uvloop.run(one_run(variant, port, calls)))
                rps, cpu = results[variant][-1]
                print(f"  run {run + 1}/{runs} {variant:8} {rps:7,.0f} calls/s  {cpu:5.0f} µs CPU per call", flush=True)
        mapping = {v: uvloop.run(failure_mapping(v)) for v in VARIANTS}
        return results, mapping
    finally:
        backend.terminate()
        backend.wait(10)


def figures(quick: bool) -> list[dict]:
    results, mapping = measure(quick)
    note = (f"{CALLERS} callers, {'1,000' if quick else '5,000'} calls per run, variants alternating; failures "
            "as the guards see them — " + "; ".join(f"{v}: " + ", ".join(f"{k} → {w}" for k, w in m.items())
                                                     for v, m in mapping.items()))
    out = []
    for i, (what, unit) in enumerate((("calls_s", "calls/s"), ("cpu_us", "µs CPU/call"))):
        kit = [r[i] for r in results["kit"]]
        lib = [r[i] for r in results["aiohttp"]]
        out.append({"key": f"client.kit.{what}", "unit": unit, "runs": kit,
                    "label": f"service call, kit stack on msa_kit.http1, {unit}"})
        out.append({"key": f"client.aiohttp.{what}", "unit": unit, "runs": lib, "reference": kit,
                    "reference_label": "the kit's own client", "label": f"… on httpx-aiohttp, {unit}"})
    out[0]["note"] = note
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    results, mapping = measure(args.quick)
    for variant, rs in results.items():
        print(f"{variant:8} {statistics.median(r[0] for r in rs):7,.0f} calls/s  "
              f"{statistics.median(r[1] for r in rs):5.0f} µs CPU per call (median of {len(rs)})")
    for variant, m in mapping.items():
        for case, what in m.items():
            print(f"{variant:8} {case:36} → {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
