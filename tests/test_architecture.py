"""The hexagonal boundaries of DESIGN §4, checked on the source: a violation fails here, not in review."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["user", "catalog", "order"]
FRAMEWORKS = {"fastapi", "starlette", "sqlalchemy", "aio_pika", "aiormq", "httpx", "aiohttp", "consul", "pydantic"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def files(pattern: str) -> list[Path]:
    return sorted(ROOT.glob(pattern))


@pytest.mark.parametrize("service", SERVICES)
def test_domain_imports_the_standard_library_only(service):
    for path in files(f"services/{service}/src/{service}/domain/*.py"):
        outside = {m for m in imports(path) if m not in sys.stdlib_module_names and m != "__future__"}
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_layer_knows_no_framework_or_driver(service):
    for path in files(f"services/{service}/src/{service}/service_layer/*.py"):
        bad = imports(path) & FRAMEWORKS
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_never_import_each_other(service):
    others = set(SERVICES) - {service}
    for path in files(f"services/{service}/src/**/*.py"):
        bad = imports(path) & others
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: talk over HTTP or events instead"


def test_the_kit_never_imports_a_service_or_a_server():
    servers = set(SERVICES) | {"msa_gateway", "msa_discovery", "msa_config_server", "msa_cli", "msa_probe",
                               "msa_console", "msa_faultproxy"}
    for path in files("libs/msa_kit/src/**/*.py"):
        bad = imports(path) & servers
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_console_sees_the_system_only_through_its_apis():
    """No service's or server's code in the console: what it shows comes over HTTP (registry, /metrics, admin
    APIs, the fault proxy's API, the trace readers of `msa trace`), as it would for any operator's tool."""
    allowed = {"msa_faultproxy.client", "msa_cli.traces"}
    forbidden = set(SERVICES) | {"msa_gateway", "msa_discovery", "msa_config_server", "msa_probe", "msa_cli",
                                 "msa_faultproxy"}
    paths = files("console/src/**/*.py")
    assert paths
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                if name.split(".")[0] in forbidden and name not in allowed:
                    raise AssertionError(f"{path.relative_to(ROOT)} imports {name}")


def test_the_rules_see_the_code():
    # Guard against the globs above silently matching nothing after a move.
    assert len(files("services/*/src/*/domain/*.py")) >= 3
    assert len(files("libs/msa_kit/src/msa_kit/*.py")) >= 5


KIT = ROOT / "libs/msa_kit/src/msa_kit"


def kit_imports(path: Path) -> set[str]:
    """The kit's own modules a kit module imports (`from .outbox import …`, `from . import sql`), at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msa_kit."):
            found.add(node.module.split(".")[1])
    return found


def import_circles(package: Path) -> list[str]:
    """The modules of a package that reach themselves through its own imports, late (in-function) ones included."""
    graph = {p.stem: kit_imports(p) - {p.stem} for p in package.glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    return sorted(m for m in graph if reaches(m, m, {m}))


def test_the_kits_modules_import_each_other_in_one_direction_only():
    """Each kit module holds one idea and no two need each other (a late import would hide a circle)."""
    circles = import_circles(KIT)
    assert not circles, f"kit modules in an import circle: {circles}"


def test_the_cli_commands_share_context_not_app():
    """app.py gathers the commands; they share msa_cli.context, and none reaches back into app.py."""
    cli = ROOT / "cli/src/msa_cli"
    assert not import_circles(cli), f"cli modules in an import circle: {import_circles(cli)}"
    assert {"context"} <= kit_imports(cli / "chaos.py") & kit_imports(cli / "canary.py")


def test_sql_is_only_the_database_adapter():
    """Engines and transactions on SQLite and PostgreSQL; the outbox, the inbox and the bus are the events side."""
    assert not kit_imports(KIT / "sql.py") & {"events", "outbox", "inbox", "tracing"}
    assert {"sql", "events", "inbox"} <= kit_imports(KIT / "outbox.py")
