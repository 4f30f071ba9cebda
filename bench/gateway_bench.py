"""Gateway: one backend endpoint called directly, through the gateway, and through nginx — side by side, one load
generator (wrk), at 1 and at 50 connections. Prints requests/s and p50/p99; never asserts.

What runs, all on 127.0.0.1 free ports, all stopped at the end:
- discovery, the config server and the gateway as under `make up` (supervised, logs and traces on, the access
  log on), from a temporary copy of config-repo with one extra public route `/bench/** → service bench`;
- the backend: one uvicorn process (uvloop, httptools) serving a FastAPI endpoint, `GET /item`, small JSON,
  registered in discovery as `bench`;
- nginx as a reverse proxy to the same backend (keep-alive upstream, access log on), with 1 worker process (one
  process, like the gateway) and with `worker_processes auto`;
- the ceiling of a Python proxy on this box: the smallest proxy that can be written with the issue's reference
  stack (uvicorn + uvloop + httptools, a raw ASGI callable, aiohttp's client with a keep-alive pool) — no routes,
  no auth, no tracing, no log, no resilience. The gateway runs one process (one event loop), like it;
- the gateway's alternatives (issue #17), each a process of its own configured and started like the gateway: the
  same Gateway served by uvicorn (httptools, uvloop) instead of granian, and the gateway with aiohttp's client on
  its proxy path instead of the kit's (`AiohttpUpstream`) — rows `gateway.uvicorn.*`, `gateway.aiohttp_upstream.*`.

nginx and wrk come from Debian (bench/tools.sh installs them for `make bench`: `apt-get install
--no-install-recommends wrk nginx-light`). Without
wrk nothing can be measured; without nginx its rows are skipped and the table says so. Needs a RabbitMQ at
AMQP_URL (the gateway joins the config bus), like `make up`.

Everything shares this machine's cores (the load generator, the backend, the proxy): figures are what one box
does. Added latency = p50 through the proxy − p50 direct, at 1 connection.

Usage: .venv/bin/python bench/gateway_bench.py [--seconds 5] [--runs 1] [--quick]
       (bench/harness.py calls figures(): 3 interleaved runs of 3 s per row; quick: 1 run of 1 s, nginx 1 worker only)
       OTEL_TRACES_SAMPLER=always_off .venv/bin/python bench/gateway_bench.py   # tracing's cost, by difference
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from msa_cli.namespace import drop_namespace
from msa_cli.runner import Topology
from msa_cli.spec import Ports, Program, default_spec, free_ports, repo_root

BENCH_ROUTE = "    - {id: bench, path: /bench, service: bench, strip_prefix: 1, auth: public}\n"
INSTALL = "apt-get update && apt-get install -y {pkg}"


# -- the backend (this file, run as a program) -----------------------------------------------------------------------

def serve_backend(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    consul = f"http://{os.environ['CONSUL_HTTP_ADDR']}"
    app = FastAPI()

    @app.get("/item")
    async def item() -> dict[str, object]:
        return {"id": 42, "name": "a benchmark item", "tags": ["small", "json"], "price": 9.99}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.on_event("startup")
    async def register() -> None:  # no check: Consul counts a service without checks as passing
        async with httpx.AsyncClient() as c:
            await c.put(f"{consul}/v1/agent/service/register",
                        json={"Name": "bench", "ID": f"bench-{port}", "Address": "127.0.0.1", "Port": port})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning")


# -- the ceiling: a minimal Python proxy (this file, run as a program) ----------------------------------------------

def serve_minimal_proxy(port: int, backend: int) -> None:
    """GET/HEAD only, whole bodies: what a Python proxy costs before it does anything a gateway must do."""
    import aiohttp
    import uvicorn

    session: aiohttp.ClientSession | None = None
    upstream = f"http://127.0.0.1:{backend}"

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500), auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await session.close()  # type: ignore[union-attr]
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k != b"host"]
        assert session is not None
        async with session.request(scope["method"], upstream + scope["path"], headers=headers) as r:
            body = await r.read()
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(k, v) for k, v in r.raw_headers if k.lower() not in (b"date", b"server")]})
            await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning")


# -- the gateway on kept libraries (this file, run as a program; issue #17) ------------------------------------------

class AiohttpUpstream:
    """The proxy path's upstream client (msa_kit.http1.Client) on aiohttp's client: what the kit's `http1.Pool`
    is measured against. Failures are raised as the httpx types the balancer and breaker judge."""

    def __init__(self, max_connections: int = 500) -> None:
        self.max_connections = max_connections
        self.session = None

    async def request(self, host, port, method, target, headers, body, *,  # type: ignore[no-untyped-def]
                      timeout, connect_timeout, tls=False):
        import aiohttp
        from yarl import URL

        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_connections),
                                                 auto_decompress=False, skip_auto_headers=("User-Agent", "Accept",
                                                                                           "Accept-Encoding"))
        url = URL(f"{'https' if tls else 'http'}://{host}:{port}{target.decode('latin-1')}", encoded=True)
        try:
            resp = await self.session.request(
                method.decode(), url, headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                data=body, allow_redirects=False, compress=None,
                timeout=aiohttp.ClientTimeout(sock_read=timeout, sock_connect=connect_timeout))
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc
        return _AiohttpAnswer(resp)

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


class _AiohttpAnswer:
    __slots__ = ("status_code", "headers", "instance", "_resp")

    def __init__(self, resp) -> None:  # type: ignore[no-untyped-def]
        self.status_code, self.instance, self._resp = resp.status, "", resp
        self.headers = [(n.lower(), v) for n, v in resp.raw_headers]

    def whole_body(self) -> bytes | None:
        return None

    async def chunks(self):  # type: ignore[no-untyped-def]
        import aiohttp

        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        self._resp.release()


def serve_gateway(variant: str) -> None:
    """`python -m msa_gateway`'s start-up, then the same Gateway served by uvicorn (httptools, uvloop) instead of
    granian; or (`aiohttp`) served as usual, with aiohttp's client on the proxy path instead of msa_kit.http1.Pool."""
    import uvloop

    import msa_gateway.app as gateway_app
    from msa_kit.app import prepare_service

    if variant == "aiohttp":
        gateway_app.Pool = AiohttpUpstream  # type: ignore[assignment,misc]
    rt, snapshot, settings = prepare_service("gateway", gateway_app.GatewaySettings)
    gateway = gateway_app.build_app(rt, snapshot, settings)
    if variant == "uvicorn":
        import uvicorn

        uvicorn.run(gateway, host=rt.host, port=rt.port, loop="uvloop", http="httptools", access_log=False,
                    log_config=None, lifespan="on")
    else:
        from msa_gateway.server import serve

        uvloop.run(serve(gateway, rt.host, rt.port))


# -- nginx -------------------------------------------------------------------------------------------------------------

NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


def start_nginx(nginx: str, workdir: Path, backend: int, port: int, workers: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, dir=workdir, backend=backend, port=port))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/item", proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the master and its workers, nothing else
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


# -- wrk ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    assert m, value
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[m.group(2)]


def run_wrk(wrk: str, url: str, connections: int, seconds: float, warmup: float = 1.0) -> Result:
    if warmup:
        subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{warmup:g}s", url], capture_output=True, timeout=30)
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Result(rps, _ms(lat["50"]), _ms(lat["99"]), errors)


# -- the run -----------------------------------------------------------------------------------------------------------



@dataclasses.dataclass
class Measured:
    targets: list[str]  # row names, in order: direct, gateway, nginx ...
    results: dict[tuple[str, int], list[Result]]  # (row, connections) → one Result per run
    notes: list[str]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def measure(seconds: float, runs: int = 1, nginx_auto: bool = True, warmup: float = 1.0) -> Measured | None:
    """Every row at 1 and 50 connections, `runs` times (interleaved: each run goes over every row once, so a noisy
    moment hits all rows alike). None when wrk is missing (it is the load generator)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    nginx = find_nginx()
    notes = []
    if nginx is None:
        notes.append(f"nginx rows skipped: nginx not found ({INSTALL.format(pkg='nginx-light')})")

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        tmpdir = Path(tmp)
        config_repo = tmpdir / "config-repo"
        shutil.copytree(repo_root() / "config-repo", config_repo)
        gateway_yml = config_repo / "gateway.yml"
        gateway_yml.write_text(gateway_yml.read_text().replace("  routes:\n", "  routes:\n" + BENCH_ROUTE, 1))
        ports = Ports.free()
        backend_port, nginx1_port, nginx_auto_port, minimal_port, *variant_ports = free_ports(4 + len(VARIANTS))
        namespace = f"bench-{uuid.uuid4().hex[:8]}."
        sampler = {k: v for k, v in os.environ.items() if k.startswith("OTEL_TRACES_SAMPLER")}  # tracing's cost
        spec = default_spec(ports, var_dir=tmpdir / "var", namespace=namespace, config_repo=config_repo,
                            extra_env=sampler)
        backend = Program("bench-backend", (sys.executable, str(Path(__file__).resolve()), "--serve-backend",
                                            str(backend_port)), backend_port, registers=("bench",), priority=100)
        # The gateway beside its alternatives (issue #17): the same Gateway, configured and started the same way,
        # served by another server or calling upstream with another client; each its own process.
        variants = [Program(f"gateway-{server}", (sys.executable, str(Path(__file__).resolve()),
                                                                    "--serve-gateway", server),
                            port, registers=("gateway",), priority=200)
                    for (server, _), port in zip(VARIANTS.items(), variant_ports)]
        programs = [p for p in spec.programs if not p.name.startswith(("user-", "catalog-", "order-"))] + [backend]
        programs += variants
        topology = Topology(dataclasses.replace(spec, programs=tuple(programs)))
        nginx_procs: list[subprocess.Popen[bytes]] = []  # and the minimal proxy
        targets = {"direct (FastAPI backend)": f"http://127.0.0.1:{backend_port}/item",
                   GATEWAY: f"http://127.0.0.1:{ports.gateway}/bench/item"}
        results: dict[tuple[str, int], list[Result]] = {}
        try:
            took = topology.up(timeout=60)
            print(f"topology up in {took:.1f} s; backend :{backend_port}, gateway :{ports.gateway}", flush=True)
            wait_http(targets[GATEWAY])
            for (_, name), program in zip(VARIANTS.items(), variants):
                targets[name] = f"http://127.0.0.1:{program.port}/bench/item"
                wait_http(targets[name])
            if nginx:
                nginx_procs.append(start_nginx(nginx, tmpdir / "nginx-1", backend_port, nginx1_port, "1"))
                targets["nginx (1 worker)"] = f"http://127.0.0.1:{nginx1_port}/item"
                if nginx_auto:
                    nginx_procs.append(start_nginx(nginx, tmpdir / "nginx-auto", backend_port, nginx_auto_port,
                                                   "auto"))
                    targets[f"nginx ({os.cpu_count()} workers)"] = f"http://127.0.0.1:{nginx_auto_port}/item"
            minimal = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-minimal-proxy",
                                        str(minimal_port), str(backend_port)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, start_new_session=True)
            nginx_procs.append(minimal)
            wait_http(f"http://127.0.0.1:{minimal_port}/item", minimal)
            targets[MINIMAL] = f"http://127.0.0.1:{minimal_port}/item"
            for run in range(runs):
                for connections in (1, 50):
                    for name, url in targets.items():
                        r = run_wrk(wrk, url, connections, seconds, warmup if run == 0 else 0.0)
                        results.setdefault((name, connections), []).append(r)
                        print(f"  run {run + 1}/{runs} {name:31} c={connections:<3} {r.rps:9,.0f} req/s  "
                              f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                              + (f"  ({r.errors} errors)" if r.errors else ""), flush=True)
        finally:
            for proc in nginx_procs:
                stop(proc)
            topology.down()
            drop_namespace(spec.amqp_url, namespace)
    return Measured(list(targets), results, notes)


DIRECT, GATEWAY, NGINX1 = "direct (FastAPI backend)", "gateway (1 process)", "nginx (1 worker)"
# --serve-gateway <server> → row name; figures' keys: gateway.<key>.c{1,50}.* (KEYS)
# (Issue #17's decision run also had the gateway's former own server, and granian beside it: bench/README.md.)
VARIANTS = {"uvicorn": "gateway on uvicorn", "aiohttp": "gateway, aiohttp upstream"}
KEYS = {"uvicorn": "uvicorn", "aiohttp": "aiohttp_upstream"}
MINIMAL = "minimal Python proxy (ceiling)"


def figures(quick: bool) -> list[dict]:
    """For bench/harness.py: the gateway's rows, with nginx (1 worker: one process, like the gateway) as the
    reference for req/s and the direct call as the reference for the latency it adds."""
    m = measure(seconds=1.0 if quick else 3.0, runs=1 if quick else 3, nginx_auto=not quick)
    if m is None:
        why = f"wrk not found, the load generator ({INSTALL.format(pkg='wrk nginx-light')})"
        return [{"key": f"gateway.c{c}.{what}", "skipped": why} for c in (1, 50) for what in ("rps", "p50_ms",
                                                                                              "p99_ms")]

    def series(name: str, c: int, attr: str) -> list[float]:
        return [getattr(r, attr) for r in m.results.get((name, c), [])]

    nginx_missing = "" if NGINX1 in m.targets else f"nginx not installed ({INSTALL.format(pkg='nginx-light')})"
    errors = sum(r.errors for rs in m.results.values() for r in rs)
    out = []
    for c in (1, 50):
        rps = {"key": f"gateway.c{c}.rps", "unit": "req/s", "runs": series(GATEWAY, c, "rps"),
               "reference": series(NGINX1, c, "rps"), "reference_label": nginx_missing or "nginx, 1 worker",
               "also": {"direct": series(DIRECT, c, "rps")}}
        others = [n for n in m.targets if n.startswith("nginx") and n != NGINX1]
        for n in others:
            rps["also"][n] = series(n, c, "rps")
        rps["also"]["minimal Python proxy"] = series(MINIMAL, c, "rps")
        out.append(rps)
        for q in ("p50_ms", "p99_ms"):
            ref_name = DIRECT if c == 1 else NGINX1
            fig = {"key": f"gateway.c{c}.{q}", "unit": "ms", "runs": series(GATEWAY, c, q),
                   "reference": series(ref_name, c, q),
                   "reference_label": "direct" if c == 1 else (nginx_missing or "nginx, 1 worker")}
            if c == 1 and NGINX1 in m.targets:
                fig["also"] = {"nginx": series(NGINX1, c, q)}
            if c == 50:
                fig["also"] = {"direct": series(DIRECT, c, q)}
            out.append(fig)
    for server, name in VARIANTS.items():
        for c in (1, 50):
            out.append({"key": f"gateway.{KEYS[server]}.c{c}.rps", "unit": "req/s", "runs": series(name, c, "rps"),
                        "reference": series(NGINX1, c, "rps"), "reference_label": nginx_missing or "nginx, 1 worker",
                        "also": {"gateway (granian)": series(GATEWAY, c, "rps")}})
            for q in ("p50_ms", "p99_ms"):
                out.append({"key": f"gateway.{KEYS[server]}.c{c}.{q}", "unit": "ms", "runs": series(name, c, q),
                            "reference": series(GATEWAY, c, q), "reference_label": "gateway (granian)"})
    out[0]["note"] = (f"wrk -t1, {1 if quick else 3} s per row × {1 if quick else 3} run(s), interleaved; one "
                      f"backend endpoint direct, through the gateway (tracing: "
                      f"{os.environ.get('OTEL_TRACES_SAMPLER', 'every request sampled')}), through nginx; "
                      f"wrk errors: {errors}" + ("; " + "; ".join(m.notes) if m.notes else ""))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (after a 1 s warm-up)")
    parser.add_argument("--runs", type=int, default=1, help="repeat every row; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-minimal-proxy", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway)
        return 0
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    if args.serve_minimal_proxy:
        serve_minimal_proxy(*args.serve_minimal_proxy)
        return 0
    seconds = 2.0 if args.quick else args.seconds

    m = measure(seconds, args.runs)
    if m is None:
        print(f"wrk not found: it is the load generator, nothing to measure without it.\n  {INSTALL.format(pkg='wrk')}")
        return 1
    targets = m.targets
    results = {k: Result(*(statistics.median(getattr(r, f) for r in rs) for f in ("rps", "p50_ms", "p99_ms",
                                                                                   "errors")))
               for k, rs in m.results.items()}

    print(f"\nwrk -t1, {seconds:g} s per row after a 1 s warm-up, median of {args.runs} run(s), {os.cpu_count()} "
          f"cores shared by everything; "
          f"OTEL_TRACES_SAMPLER={os.environ.get('OTEL_TRACES_SAMPLER', 'parentbased_always_on (default)')}\n")
    print(f"{'':31} | {'1 connection':^30} | {'50 connections':^30}")
    print(f"{'':31} | {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}    | {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name in targets:
        row = []
        for c in (1, 50):
            r = results.get((name, c))
            row.append(f"{r.rps:8,.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}   " if r else f"{'-':>8} {'-':>8} {'-':>8}   ")
        print(f"{name:31} | {row[0]} | {row[1]}")
    direct = results.get((DIRECT, 1))
    for name in targets:
        if name.startswith("direct") or (name, 1) not in results or direct is None:
            continue
        added = (results[(name, 1)].p50_ms - direct.p50_ms) * 1000
        print(f"{name}: adds {added:.0f} µs to p50 at 1 connection", end="")
        if not name.startswith("nginx") and NGINX1 in targets:
            # Each run's ratio against nginx in that same run, then the median (the machine's load moves both).
            shares = [statistics.median(a.rps / b.rps for a, b in zip(m.results[(name, c)], m.results[(NGINX1, c)]))
                      for c in (1, 50)]
            print(f"; req/s vs nginx (1 worker): {shares[0]:.0%} at 1 connection, {shares[1]:.0%} at 50", end="")
        print()
    for note in m.notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
