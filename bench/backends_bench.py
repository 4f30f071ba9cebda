"""The order flow on each backend: SQLite files (local mode) beside PostgreSQL (the compose stack's), one run after
the other on the same machine, the same topology, the same load.

For each backend a topology on free ports (PostgreSQL: a database per service, made for the run and dropped after),
stock topped up, then a closed loop of order placements through the gateway (bench/stack_bench.py's generator);
the figures are the placement p50 and rate, each with the SQLite run of the same round as its reference. Needs the
PostgreSQL server of tests/dependencies.py (MSA_TEST_POSTGRES_URL, default 127.0.0.1:5432).

    .venv/bin/python bench/backends_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))  # dependencies.py: the PostgreSQL server and its databases

FULL = {"runs": 3, "seconds": 8.0, "concurrency": 8}
QUICK = {"runs": 1, "seconds": 2.0, "concurrency": 4}


def _stack_bench():
    """bench/stack_bench.py's load generator and percentile (benchmarks are files, not a package)."""
    if "stack_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stack_bench", BENCH / "stack_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["stack_bench"] = module  # before it runs: its dataclasses look themselves up there
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["stack_bench"]


def one(tmp: Path, databases: dict[str, str] | None, seconds: float, concurrency: int):
    from msa_cli.namespace import drop_namespace
    from msa_cli.runner import Topology
    from msa_cli.spec import Ports, default_spec

    sb = _stack_bench()
    namespace = f"bench-{uuid.uuid4().hex[:8]}."
    spec = default_spec(Ports.free(), var_dir=tmp, namespace=namespace, databases=databases)
    topology = Topology(spec)
    try:
        topology.up(timeout=60)
        gateway = spec.program("gateway").url
        skus = asyncio.run(sb.top_up_stock(gateway, spec.program("catalog-1").url))
        return asyncio.run(sb.place_orders(gateway, skus, concurrency, seconds))
    finally:
        topology.down()
        drop_namespace(spec.amqp_url, namespace)


def measure(quick: bool) -> tuple[list, list]:
    import dependencies

    size = QUICK if quick else FULL
    sqlite, postgres = [], []
    with dependencies.postgres(print) as server:
        for i in range(size["runs"]):
            with tempfile.TemporaryDirectory(prefix="backends-bench-") as tmp:
                sqlite.append(one(Path(tmp) / "sqlite", None, size["seconds"], size["concurrency"]))
                run = uuid.uuid4().hex[:8]
                names = {s: f"msa_bench_{s}_{run}" for s in ("user", "catalog", "order")}
                urls = {s: asyncio.run(dependencies.create_database(server, n)) for s, n in names.items()}
                try:
                    postgres.append(one(Path(tmp) / "pg", urls, size["seconds"], size["concurrency"]))
                finally:
                    for n in names.values():
                        asyncio.run(dependencies.drop_database(server, n))
            sb = _stack_bench()
            print(f"  run {i + 1}/{size['runs']}: SQLite {sqlite[-1].rps:.0f}/s p50 "
                  f"{sb.pct(sqlite[-1].latencies_ms, 50):.1f} ms · PostgreSQL {postgres[-1].rps:.0f}/s p50 "
                  f"{sb.pct(postgres[-1].latencies_ms, 50):.1f} ms", flush=True)
    return sqlite, postgres


def figures(quick: bool) -> list[dict]:
    size = QUICK if quick else FULL
    sqlite, postgres = measure(quick)
    pct = _stack_bench().pct
    failures = sum(sum(r.failures.values()) for r in sqlite + postgres)
    note = (f"closed loop, {size['concurrency']} clients, {size['seconds']:g} s per backend per run, SQLite then "
            f"PostgreSQL in each run; non-201 answers: {failures}")
    return [
        {"key": "backends.pg.place_p50_ms", "unit": "ms", "runs": [pct(r.latencies_ms, 50) for r in postgres],
         "reference": [pct(r.latencies_ms, 50) for r in sqlite], "reference_label": "SQLite, same run",
         "note": note},
        {"key": "backends.pg.place_rps", "unit": "req/s", "runs": [r.rps for r in postgres],
         "reference": [r.rps for r in sqlite], "reference_label": "SQLite, same run"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for f in figures(parser.parse_args().quick):
        print(f["key"], [round(v, 2) for v in f["runs"]], "reference", [round(v, 2) for v in f["reference"]])


if __name__ == "__main__":
    main()
