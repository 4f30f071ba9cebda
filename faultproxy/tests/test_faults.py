"""The proxy's data path against a tiny echo server: bytes pass unchanged, and each fault does what it says.

Timings are measured and printed (run with -s to see them); the asserts are deliberately tolerant."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from msa_faultproxy.client import FaultProxyClient


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> float:
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert got == payload
    return time.perf_counter() - started


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 2.0) -> str:
    """How the connection ended: 'eof' (FIN) or 'reset' (RST). Fails if it stays open."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except ConnectionResetError:
        return "reset"
    assert data == b"", f"expected the connection to end, got {len(data)} bytes"
    return "eof"


async def test_bytes_pass_through_unchanged_both_ways(echo_proxy, connect, echo):
    payload = os.urandom(1 << 20)  # 1 MiB: many chunks each way
    async with connect(echo_proxy) as (reader, writer):
        took = await roundtrip(reader, writer, payload)
        writer.write_eof()  # a half-close travels through too: the echo server ends, and so does our stream
        assert await closed_by_peer(reader) == "eof"
    print(f"\n1 MiB echoed through the proxy in {took * 1000:.1f} ms")
    assert echo.connections == 1


async def test_latency_delays_without_queueing(fp: FaultProxyClient, echo_proxy, connect):
    async with connect(echo_proxy) as (reader, writer):
        base = min([await roundtrip(reader, writer, b"ping") for _ in range(5)])
        await fp.add_toxic("echo", "latency", {"latency": 200, "jitter": 20})  # applies to the live connection
        slow = await roundtrip(reader, writer, b"ping")
        # Five messages 20 ms apart: each is late by ~200 ms, but they are not queued behind each other.
        started = time.perf_counter()
        for i in range(5):
            writer.write(b"m%d" % i)
            await asyncio.sleep(0.02)
        got = await asyncio.wait_for(reader.readexactly(10), 5)
        burst = time.perf_counter() - started
    print(f"\nround trip: {base * 1000:.2f} ms through the bare proxy, {slow * 1000:.0f} ms with latency 200±20 ms "
          f"downstream; 5 messages over 80 ms arrived after {burst * 1000:.0f} ms")
    assert got == b"m0m1m2m3m4"
    assert 0.17 < slow < 0.6
    assert 0.25 < burst < 0.6  # ~80 ms of sending + ~220 ms, not 5 × 200 ms


async def test_upstream_latency_applies_to_the_other_direction(fp: FaultProxyClient, echo_proxy, connect):
    await fp.add_toxic("echo", "latency", {"latency": 150}, stream="upstream")
    async with connect(echo_proxy) as (reader, writer):
        took = await roundtrip(reader, writer, b"x")
    assert 0.13 < took < 0.5


async def test_bandwidth_limits_the_rate(fp: FaultProxyClient, echo_proxy, connect):
    await fp.add_toxic("echo", "bandwidth", {"rate": 500})  # KB/s, downstream
    payload = os.urandom(250_000)
    async with connect(echo_proxy) as (reader, writer):
        took = await roundtrip(reader, writer, payload)
    rate = len(payload) / took / 1000
    print(f"\nbandwidth 500 KB/s: 250 KB in {took:.2f} s = {rate:.0f} KB/s")
    assert 300 < rate < 650


async def test_disable_closes_live_connections_and_refuses_new_ones_until_enabled(
    fp: FaultProxyClient, echo_proxy, connect
):
    async with connect(echo_proxy) as (reader, writer):
        await roundtrip(reader, writer, b"before")
        started = time.perf_counter()
        proxy = await fp.disable("echo")
        assert proxy["enabled"] is False
        how = await closed_by_peer(reader, timeout=1)
        print(f"\nlive connection ended ({how}) {(time.perf_counter() - started) * 1000:.1f} ms after disable")

    async with connect(echo_proxy) as (reader, writer):  # accepted by the kernel, then closed by the proxy at once
        writer.write(b"anyone?")
        assert await closed_by_peer(reader, timeout=1) in ("eof", "reset")

    await fp.enable("echo")
    async with connect(echo_proxy) as (reader, writer):
        await roundtrip(reader, writer, b"after")


async def test_reset_peer_resets_after_its_timeout(fp: FaultProxyClient, echo_proxy, connect):
    async with connect(echo_proxy) as (reader, writer):
        await roundtrip(reader, writer, b"hello")
        started = time.perf_counter()
        await fp.add_toxic("echo", "reset_peer", {"timeout": 150})
        assert await closed_by_peer(reader) == "reset"
        took = time.perf_counter() - started
    print(f"\nreset_peer 150 ms: connection reset after {took * 1000:.0f} ms")
    assert 0.12 < took < 1.0


async def test_timeout_zero_drops_data_until_removed(fp: FaultProxyClient, echo_proxy, connect):
    async with connect(echo_proxy) as (reader, writer):
        await fp.add_toxic("echo", "timeout", {"timeout": 0})
        writer.write(b"lost")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)  # nothing arrives, and the connection stays open
        await fp.remove_toxic("echo", "timeout_downstream")
        await roundtrip(reader, writer, b"flows again")


async def test_timeout_closes_after_its_timeout(fp: FaultProxyClient, echo_proxy, connect):
    await fp.add_toxic("echo", "timeout", {"timeout": 200}, stream="upstream")
    async with connect(echo_proxy) as (reader, writer):
        started = time.perf_counter()
        writer.write(b"into the void")
        assert await closed_by_peer(reader) == "eof"
        took = time.perf_counter() - started
    print(f"\ntimeout 200 ms: silence, then closed after {took * 1000:.0f} ms")
    assert 0.15 < took < 1.0


async def test_toxicity_zero_affects_no_connection(fp: FaultProxyClient, echo_proxy, connect):
    await fp.add_toxic("echo", "reset_peer", {"timeout": 0}, toxicity=0.0)
    async with connect(echo_proxy) as (reader, writer):
        await asyncio.sleep(0.1)
        await roundtrip(reader, writer, b"unharmed")


async def test_reset_heals_everything(fp: FaultProxyClient, echo_proxy, connect):
    await fp.add_toxic("echo", "timeout", {"timeout": 0})
    await fp.disable("echo")
    await fp.reset()
    proxy = await fp.proxy("echo")
    assert proxy["enabled"] is True and proxy["toxics"] == []
    async with connect(echo_proxy) as (reader, writer):
        await roundtrip(reader, writer, b"healed")


async def test_unreachable_upstream_closes_the_client(fp: FaultProxyClient, connect):
    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        created = await fp.create_proxy("nowhere", "127.0.0.1:0", f"127.0.0.1:{s.getsockname()[1]}")
        async with connect(int(created["listen"].rsplit(":", 1)[1])) as (reader, writer):
            assert await closed_by_peer(reader) in ("eof", "reset")
