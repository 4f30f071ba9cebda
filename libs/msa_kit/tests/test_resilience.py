import asyncio

import httpx
import pytest

from msa_kit.discovery import Instance
from msa_kit.resilience import BalancingTransport, BreakerPolicy, BreakerTransport, ServiceUnavailable


class FakeDiscovery:
    def __init__(self, **services: list[Instance]) -> None:
        self.services = services

    async def instances(self, service: str) -> list[Instance]:
        return self.services.get(service, [])


A, B = Instance("catalog-1", "127.0.0.1", 1001), Instance("catalog-2", "127.0.0.1", 1002)


def transport(handler) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(handler)


async def test_round_robin_spreads_calls_evenly_and_names_the_instance():
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.port)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=BalancingTransport(FakeDiscovery(catalog=[A, B]), transport(handler)))
    for _ in range(10):
        r = await client.get("http://catalog/products")
        assert r.extensions["msa.instance"] in {"catalog-1", "catalog-2"}
    assert seen.count(1001) == 5 and seen.count(1002) == 5


async def test_a_refused_connection_fails_over_to_another_instance():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.port == 1001:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"port": request.url.port})

    client = httpx.AsyncClient(transport=BalancingTransport(FakeDiscovery(catalog=[A, B]), transport(handler)))
    for _ in range(4):
        assert (await client.get("http://catalog/x")).json() == {"port": 1002}


async def test_no_instance_and_all_refusing_are_service_unavailable():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.AsyncClient(transport=BalancingTransport(FakeDiscovery(catalog=[A, B]), transport(refuse)))
    with pytest.raises(ServiceUnavailable, match="every instance refused"):
        await client.get("http://catalog/x")
    with pytest.raises(ServiceUnavailable, match="no passing instance"):
        await client.get("http://order/x")


async def test_breaker_opens_after_fail_max_then_fails_fast_without_calling():
    calls = 0

    def failing(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500)

    stack = BreakerTransport(transport(failing), lambda _s: BreakerPolicy(fail_max=3, reset_timeout_s=60))
    client = httpx.AsyncClient(transport=stack)
    statuses = [(await client.get("http://catalog/x")).status_code for _ in range(3)]
    assert statuses == [500, 500, 500]  # the caller still sees the failures that opened the breaker
    with pytest.raises(ServiceUnavailable, match="circuit breaker open"):
        await client.get("http://catalog/x")
    assert calls == 3
    assert stack.breaker("catalog").current_state == "open"


async def test_half_open_admits_one_probe_and_closes_on_success():
    gate = asyncio.Event()
    calls = 0

    async def slow_ok(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await gate.wait()
        return httpx.Response(200)

    stack = BreakerTransport(transport(slow_ok), lambda _s: BreakerPolicy(fail_max=1, reset_timeout_s=0.05))
    cb = stack.breaker("catalog")
    cb.open()
    await asyncio.sleep(0.06)
    client = httpx.AsyncClient(transport=stack)
    probe = asyncio.create_task(client.get("http://catalog/x"))
    await asyncio.sleep(0.01)
    others = await asyncio.gather(*(client.get("http://catalog/x") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, ServiceUnavailable) for o in others)
    gate.set()
    assert (await probe).status_code == 200
    assert calls == 1 and cb.current_state == "closed"


def test_least_outstanding_prefers_the_instance_with_fewer_calls_in_flight():
    from msa_kit.balancing import strategy

    in_flight = {"catalog-1": 5, "catalog-2": 0}
    chooser = strategy("least_outstanding", in_flight)
    picks = [chooser.choose([A, B]).id for _ in range(50)]
    assert set(picks) == {"catalog-2"}  # of any two picked, the idle one wins


async def test_weights_from_config_split_calls_by_instance_version_within_5_percent_over_2000():
    v1, v2 = Instance("catalog-1", "127.0.0.1", 1001, meta={"version": "v1"}), \
        Instance("catalog-3", "127.0.0.1", 1003, meta={"version": "v2"})
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.port)
        return httpx.Response(200)

    balancer = BalancingTransport(FakeDiscovery(catalog=[v1, v2]), transport(handler),
                                  weights_for=lambda s: {"v1": 90, "v2": 10} if s == "catalog" else None)
    client = httpx.AsyncClient(transport=balancer)
    for _ in range(2000):
        await client.get("http://catalog/x")
    assert abs(seen.count(1003) / 2000 - 0.10) <= 0.05


async def test_a_weighted_split_keeps_round_robin_even_within_a_version():
    c1, c2 = Instance("catalog-1", "127.0.0.1", 1001, meta={"version": "v1"}), \
        Instance("catalog-2", "127.0.0.1", 1002, meta={"version": "v1"})
    c3 = Instance("catalog-3", "127.0.0.1", 1003, meta={"version": "v2"})
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.port)
        return httpx.Response(200)

    balancer = BalancingTransport(FakeDiscovery(catalog=[c1, c2, c3]), transport(handler),
                                  weights_for=lambda _s: {"v1": 50, "v2": 50})
    client = httpx.AsyncClient(transport=balancer)
    for _ in range(400):
        await client.get("http://catalog/x")
    assert seen.count(1001) == seen.count(1002) == 100 and seen.count(1003) == 200


async def test_a_cancelled_unit_of_work_still_releases_the_write_lock(tmp_path, monkeypatch):
    import asyncio

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection

    from msa_kit.runtime import Runtime
    from msa_kit.outbox import SqlUnitOfWork, add_messaging_tables
    from msa_kit.sql import create_schema, database_engine, write_lock

    rt = Runtime.for_service("locktest")
    rt.var_dir = tmp_path
    meta = sa.MetaData()
    outbox, inbox = add_messaging_tables(meta)
    engine = database_engine(rt)
    await create_schema(engine, meta)
    close = AsyncConnection.close

    async def cancelled_while_closing(self: AsyncConnection) -> None:  # a broker drop cancels the handler here
        await close(self)
        raise asyncio.CancelledError()

    monkeypatch.setattr(AsyncConnection, "close", cancelled_while_closing)
    with pytest.raises(asyncio.CancelledError):
        async with SqlUnitOfWork(engine, outbox, inbox, "/t"):
            pass
    monkeypatch.undo()
    assert not write_lock(engine).locked()  # otherwise every later write of the process waits forever
    await engine.dispose()
