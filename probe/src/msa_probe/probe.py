"""The probe loop: every `period_s`, one synthetic transaction through the gateway, as a user makes it.

Steps: `login` (sign up once, 409 = the account exists; log in; again on a 401), `catalog` (pick a product in
stock), `place` (an order of one, tagged `X-Synthetic-Transaction: true`, with an Idempotency-Key), `confirm` (poll
until the saga CONFIRMED it; REJECTED or still PENDING after `confirm_timeout_s` is a failure), `cancel` (stock
goes back: the catalog's compensation). The calls go over a plain HTTP client with a per-request timeout: a probe
must see what a user sees, so no retries, breakers or failovers of its own hide a failure.

Each run is read from the settings of that moment (a refresh applies at the next run) and reported as metrics, one
log line when it fails (WARNING: the step and the reason) or recovers (INFO), and `document()` for GET /probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field, SecretStr

log = logging.getLogger(__name__)
tracer = trace.get_tracer("msa_probe")

STEPS = ("login", "catalog", "place", "confirm", "cancel")
RESULTS = ("success", "failure")
SYNTHETIC_HEADER = "X-Synthetic-Transaction"  # the order service tags such an order `synthetic` (kept out of figures)
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


class ProbeSection(BaseModel):
    """`probe:` in config-repo/probe.yml; read at every run, so a refresh applies live."""

    enabled: bool = True
    period_s: float = Field(10.0, ge=0.1, le=3600)  # one transaction this often (from the start of the last one)
    username: str = Field("synthetic-probe", min_length=1, max_length=64)
    password: SecretStr = SecretStr("")  # `{cipher}` in config-repo; never logged, masked in /admin/config
    gateway_url: str = ""  # a fixed gateway, e.g. http://127.0.0.1:8080; empty: the first passing `gateway` instance
    timeout_s: float = Field(3.0, gt=0, le=60)  # per request
    confirm_timeout_s: float = Field(5.0, gt=0, le=300)  # from the placing until the saga confirmed the order


class ProbeMetrics:
    """The probe's figures. Made when the app is built (not at import: supervisord imports this module once for
    every program it forks, and only the probe should export them), every labelled series at 0 from the start."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.runs = Counter("msa_probe_runs", "Synthetic transactions run, by result (success, failure)",
                            ["result"], registry=registry)
        self.failures = Counter("msa_probe_failures", "Failed synthetic transactions, by the step that failed",
                                ["step"], registry=registry)
        self.duration = Histogram("msa_probe_duration_seconds", "Time a successful synthetic transaction took, "
                                  "from logging in to the cancel answered", buckets=DURATION_BUCKETS,
                                  registry=registry)
        self.last_success = Gauge("msa_probe_last_success", "1 if the last synthetic transaction succeeded, else 0",
                                  registry=registry)
        self.last_run = Gauge("msa_probe_last_run_timestamp_seconds", "When the last synthetic transaction ended "
                              "(unix time)", registry=registry)
        for result in RESULTS:
            self.runs.labels(result=result)
        for step in STEPS:
            self.failures.labels(step=step)


@dataclass
class Result:
    ok: bool
    step: str | None  # the step that failed
    error: str | None
    duration_ms: float
    finished_at: str  # ISO 8601, UTC
    order_id: str | None = None
    trace_id: str | None = None  # `msa trace <id>` shows the transaction across every service


class StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step


def describe(r: httpx.Response) -> str:
    """`503: the catalog cannot be asked ...`: the status and the problem's detail, short."""
    detail = ""
    with contextlib.suppress(ValueError, AttributeError):
        body = r.json()
        detail = str(body.get("detail") or body.get("title") or "")
    return f"{r.status_code}: {detail[:200]}" if detail else str(r.status_code)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Probe:
    def __init__(self, settings: Callable[[], ProbeSection], find_gateway: Callable[[], Awaitable[list[str]]], *,
                 metrics: ProbeMetrics, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`settings`: the current probe section (the platform's settings are replaced on a refresh);
        `find_gateway`: the base URLs of the passing gateway instances."""
        self.settings, self.find_gateway, self.metrics = settings, find_gateway, metrics
        self._transport = transport
        self.last: Result | None = None
        self.runs = self.failures = 0
        self._failing = 0  # failed runs in a row
        self._user: str | None = None  # the account `_token` and `_exists` are about
        self._token: str | None = None
        self._exists = False  # the account exists (signed up, or 409)
        self._untidy = False  # a failed run may have left a confirmed order behind
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        transport = self._transport or AsyncOpenTelemetryTransport(httpx.AsyncHTTPTransport())
        self._http = httpx.AsyncClient(transport=transport, trust_env=False)
        self._task = asyncio.create_task(self._loop(), name="probe")

    def wake(self) -> None:
        """Look at the settings again now (a refresh may have enabled the probe or shortened its period)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_start = loop.time()  # the first run one period after the start: the topology settles first
        while True:
            self._wake.clear()
            s = self.settings()
            delay: float | None = None  # disabled: until a refresh wakes us
            if s.enabled:
                delay = last_start + s.period_s - loop.time()
                if delay <= 0:
                    last_start = loop.time()
                    try:
                        await self.run_once()
                    except Exception:  # a bug here must not end the probe; run_once reports every expected failure
                        log.exception("the probe loop failed")
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # -- one run ---------------------------------------------------------------------------------------------
    async def run_once(self) -> Result:
        s = self.settings()
        if self._http is None:
            raise RuntimeError("the probe is not started")
        started = time.perf_counter()
        step, order_id, error, base = "login", None, None, None
        with tracer.start_as_current_span("synthetic transaction") as span:
            ctx = span.get_span_context()
            trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
            try:
                base = await self._gateway(s)
                await self._ensure_logged_in(base, s)
                step = "catalog"
                sku = await self._product_in_stock(base, s)
                step = "place"
                order_id = await self._place(base, s, sku)
                step = "confirm"
                await self._confirmed(base, s, order_id)
                step = "cancel"
                await self._cancel(base, s, order_id)
            except StepFailed as exc:
                step, error = exc.step, str(exc)
            except httpx.TimeoutException as exc:
                error = f"no answer within {s.timeout_s:g} s ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - an answer not as the API promises (bad JSON, missing field)
                error = f"{type(exc).__name__}: {exc}"
            duration_ms = (time.perf_counter() - started) * 1000
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{step}: {error}"))
                span.set_attribute("msa.probe.step", step)
            finished = utc_now()
            result = Result(error is None, None if error is None else step, error, round(duration_ms, 1),
                            finished.isoformat(timespec="milliseconds").replace("+00:00", "Z"), order_id, trace_id)
            self._record(result, finished)  # in the span: the log line carries the trace id (`msa logs --trace`)
        if error is not None and step in ("place", "confirm", "cancel"):
            self._untidy = True  # an order may exist that this run did not cancel
        if self._untidy and base is not None and self._token is not None:
            await self._tidy(base, s)
        return result

    def _record(self, result: Result, finished: datetime) -> None:
        self.last = result
        self.runs += 1
        m = self.metrics
        m.last_run.set(finished.timestamp())
        if result.ok:
            m.runs.labels(result="success").inc()
            m.duration.observe(result.duration_ms / 1000)
            m.last_success.set(1)
            if self._failing:
                log.info("synthetic transaction succeeded again after %d failed run(s), in %.0f ms",
                         self._failing, result.duration_ms)
            else:
                log.debug("synthetic transaction succeeded in %.0f ms", result.duration_ms)
            self._failing = 0
            return
        self.failures += 1
        self._failing += 1
        m.runs.labels(result="failure").inc()
        m.failures.labels(step=result.step).inc()
        m.last_success.set(0)
        log.warning("synthetic transaction failed at %s: %s (%.0f ms, %d failed in a row)", result.step,
                    result.error, result.duration_ms, self._failing)

    def document(self) -> dict[str, Any]:
        """GET /probe: the last result, the counts, and the settings in force."""
        s = self.settings()
        last = asdict(self.last) if self.last else dict.fromkeys(
            ("ok", "step", "error", "duration_ms", "finished_at", "order_id", "trace_id"))
        return {**last, "runs": self.runs, "failures": self.failures, "period_s": s.period_s, "enabled": s.enabled,
                "username": s.username}

    # -- the steps -------------------------------------------------------------------------------------------
    async def _gateway(self, s: ProbeSection) -> str:
        if s.gateway_url:
            return s.gateway_url.rstrip("/")
        urls = await self.find_gateway()
        if not urls:
            raise StepFailed("login", "no passing gateway instance in discovery")
        return urls[0].rstrip("/")

    async def _send(self, s: ProbeSection, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self._http is not None
        return await self._http.request(method, url, timeout=httpx.Timeout(s.timeout_s), **kwargs)

    async def _ensure_logged_in(self, base: str, s: ProbeSection) -> None:
        if self._user != s.username:  # first run, or the account was changed by a refresh
            self._user, self._token, self._exists = s.username, None, False
        if self._token is None:
            await self._log_in(base, s)

    async def _log_in(self, base: str, s: ProbeSection) -> None:
        password = s.password.get_secret_value()
        if not password:
            raise StepFailed("login", "no probe.password configured")
        signed_up_now = False
        if not self._exists:
            await self._sign_up(base, s, password)
            signed_up_now = True
        r = await self._token_request(base, s, password)
        if r.status_code == 401 and not signed_up_now:
            # The account may be gone (a fresh user database): make it again, then log in once more.
            await self._sign_up(base, s, password)
            r = await self._token_request(base, s, password)
        if r.status_code != 200:
            hint = " (is probe.password this account's?)" if r.status_code == 401 else ""
            raise StepFailed("login", f"POST /api/auth/token answered {describe(r)}{hint}")
        token = r.json().get("access_token")
        if not token:
            raise StepFailed("login", "POST /api/auth/token answered no access_token")
        self._token = token

    async def _sign_up(self, base: str, s: ProbeSection, password: str) -> None:
        r = await self._send(s, "POST", f"{base}/api/users", json={"username": s.username, "password": password})
        if r.status_code not in (201, 409):  # 409: the account exists already
            raise StepFailed("login", f"POST /api/users answered {describe(r)}")
        self._exists = True

    async def _token_request(self, base: str, s: ProbeSection, password: str) -> httpx.Response:
        return await self._send(s, "POST", f"{base}/api/auth/token",
                                data={"username": s.username, "password": password})

    async def _authed(self, base: str, s: ProbeSection, method: str, path: str, *,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """A call as the probe user; a 401 (the token expired, or the signing key changed) logs in again once."""
        for attempt in (1, 2):
            assert self._token is not None
            r = await self._send(s, method, base + path,
                                 headers={"Authorization": f"Bearer {self._token}", **(headers or {})}, **kwargs)
            if r.status_code != 401 or attempt == 2:
                return r
            self._token = None
            await self._log_in(base, s)
        raise AssertionError("unreachable")

    async def _product_in_stock(self, base: str, s: ProbeSection) -> str:
        r = await self._send(s, "GET", f"{base}/api/catalog/products")
        if r.status_code != 200:
            raise StepFailed("catalog", f"GET /api/catalog/products answered {describe(r)}")
        in_stock = [p for p in r.json() if int(p.get("stock") or 0) > 0]
        if not in_stock:
            raise StepFailed("catalog", "no product in stock")
        return max(in_stock, key=lambda p: int(p["stock"]))["sku"]  # the one one unit matters least to

    async def _place(self, base: str, s: ProbeSection, sku: str) -> str:
        r = await self._authed(base, s, "POST", "/api/orders", json={"items": [{"sku": sku, "quantity": 1}]},
                               headers={SYNTHETIC_HEADER: "true", "Idempotency-Key": f"probe-{uuid.uuid4()}"})
        if r.status_code not in (200, 201):
            raise StepFailed("place", f"POST /api/orders answered {describe(r)}")
        order = r.json()
        if order.get("synthetic") is not True:  # it would count as a customer's: say so, loudly
            raise StepFailed("place", f"order {order.get('id')} is not tagged synthetic ({SYNTHETIC_HEADER} lost "
                                      "on the way?)")
        return str(order["id"])

    async def _confirmed(self, base: str, s: ProbeSection, order_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.confirm_timeout_s
        pause = 0.02
        while True:
            r = await self._authed(base, s, "GET", f"/api/orders/{order_id}")
            if r.status_code != 200:
                raise StepFailed("confirm", f"GET /api/orders/{{id}} answered {describe(r)}")
            order = r.json()
            status = order.get("status")
            if status == "CONFIRMED":
                return
            if status == "REJECTED":
                raise StepFailed("confirm", f"order rejected: {order.get('reason') or 'no reason given'}")
            if status != "PENDING":
                raise StepFailed("confirm", f"order is {status}, not CONFIRMED")
            left = deadline - loop.time()
            if left <= 0:
                raise StepFailed("confirm", f"order still PENDING after {s.confirm_timeout_s:g} s")
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)

    async def _cancel(self, base: str, s: ProbeSection, order_id: str) -> None:
        r = await self._authed(base, s, "POST", f"/api/orders/{order_id}/cancel")
        if r.status_code != 200:
            raise StepFailed("cancel", f"POST /api/orders/{{id}}/cancel answered {describe(r)}")
        if r.json().get("status") != "CANCELLED":
            raise StepFailed("cancel", f"order is {r.json().get('status')} after the cancel")

    async def _tidy(self, base: str, s: ProbeSection) -> None:
        """Cancel what failed runs left confirmed, so the probe holds no stock; best effort, until nothing is left
        (a PENDING order may still be confirmed later: look again after the next run)."""
        with tracer.start_as_current_span("synthetic tidy-up"):
            try:
                r = await self._authed(base, s, "GET", "/api/orders")
                if r.status_code != 200:
                    return
                mine = [o for o in r.json() if o.get("synthetic")]
                cancelled, left = 0, False
                for order in mine:
                    if order.get("status") == "CONFIRMED":
                        c = await self._authed(base, s, "POST", f"/api/orders/{order['id']}/cancel")
                        cancelled += c.status_code == 200
                        left |= c.status_code != 200
                    left |= order.get("status") == "PENDING"
            except (httpx.HTTPError, StepFailed, ValueError, KeyError):
                return
        if cancelled:
            log.info("cancelled %d synthetic order(s) that failed runs left confirmed", cancelled)
        self._untidy = left
