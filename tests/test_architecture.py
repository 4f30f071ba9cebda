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


# -- One service shape (issue #17): the Cosmic Python one, the same in user, catalog and order -------------------
SHAPE = ["bootstrap.py", "domain/model.py", "domain/events.py", "service_layer/handlers.py",
         "service_layer/unit_of_work.py", "adapters/repository.py", "entrypoints/http.py", "entrypoints/events.py"]


def src(service: str) -> Path:
    return ROOT / f"services/{service}/src/{service}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_the_same_shape(service):
    missing = [f for f in SHAPE if not (src(service) / f).is_file()]
    assert not missing, f"{service} lacks {missing}: a newcomer who read one service must find the same in all three"
    folders = {p.name for p in src(service).iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"domain", "service_layer", "adapters", "entrypoints"}, folders


@pytest.mark.parametrize("service", SERVICES)
def test_handlers_know_no_web_framework_or_database_library(service):
    bad = imports(src(service) / "service_layer/handlers.py") & {"fastapi", "starlette", "sqlalchemy", "pydantic"}
    assert not bad, f"{service}'s handlers import {bad}"


def adapter_classes(service: str) -> set[str]:
    return {node.name for path in (src(service) / "adapters").glob("*.py")
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}


@pytest.mark.parametrize("service", SERVICES)
def test_adapters_are_built_only_in_bootstrap(service):
    """No route, consumer or handler constructs an adapter (a client per request, a repository by hand): bootstrap.py
    builds each once and hands it over; the adapters' own modules build their parts (a unit of work its repos)."""
    classes = adapter_classes(service)
    assert classes, f"{service} has no adapter class: the rule sees nothing"
    for path in src(service).glob("[ed]*/*.py"):  # domain/, entrypoints/
        tree = ast.parse(path.read_text())
        built = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        built |= {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not built & classes, f"{path.relative_to(ROOT)} builds {built & classes}: only bootstrap.py does"
    for path in (src(service) / "service_layer").glob("*.py"):
        assert not imports_relative(path, "adapters"), f"{path.relative_to(ROOT)} imports an adapter"


def imports_relative(path: Path, package: str) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.level >= 1 and (n.module or "").split(".")[0] == package
               for n in ast.walk(ast.parse(path.read_text())))


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoints_get_adapters_injected_and_only_call_handlers(service):
    """Routes take what bootstrap.py provided (`Provided`), never `request.app.state`; they open no transaction and
    touch no repository: parse, call a handler, map the result."""
    for name in ("http.py", "events.py"):
        path = src(service) / "entrypoints" / name
        text = path.read_text()
        tree = ast.parse(text)
        assert "app.state" not in text, f"{path.relative_to(ROOT)} reaches into app.state"
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.AsyncWith)], \
            f"{path.relative_to(ROOT)} opens a unit of work itself: a handler does"
        repos = {"orders", "products", "reservations", "users", "history", "login_failures"}
        touched = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id == "uow"} & repos
        assert not touched, f"{path.relative_to(ROOT)} uses repositories {touched}: call a handler"
    assert "Provided(" in (src(service) / "entrypoints/http.py").read_text()
    assert "adapters=" in (src(service) / "bootstrap.py").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_handlers_take_a_typed_unit_of_work(service):
    """Each use case's first parameter is the service's unit of work (`uow`, the one an event's inbox opened) or its
    factory (`uows`, for one that opens its own transactions): typed, never `Any`."""
    allowed = {f"{service.capitalize()}UnitOfWork", f"{service.capitalize()}UnitsOfWork"}
    for name in ("service_layer/handlers.py", "entrypoints/events.py"):
        path = src(service) / name
        functions = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.AsyncFunctionDef)]
        assert functions
        for fn in functions:
            uow = [a for a in fn.args.args if a.arg in ("uow", "uows")]
            if name.startswith("entrypoints") and not uow:
                continue
            assert uow, f"{path.relative_to(ROOT)}: {fn.name} takes no unit of work"
            annotation = ast.unparse(uow[0].annotation) if uow[0].annotation else "(none)"
            assert annotation in allowed, f"{path.relative_to(ROOT)}: {fn.name}'s {uow[0].arg} is {annotation}"


@pytest.mark.parametrize("service", SERVICES)
def test_statuses_are_enums(service):
    import dataclasses
    import enum
    import importlib
    import typing

    model = importlib.import_module(f"{service}.domain.model")
    fields = [(cls.__name__, f.name, typing.get_type_hints(cls)[f.name]) for cls in vars(model).values()
              if dataclasses.is_dataclass(cls) and isinstance(cls, type) for f in dataclasses.fields(cls)
              if f.name == "status"]
    for cls, name, hint in fields:
        assert isinstance(hint, type) and issubclass(hint, enum.Enum), f"{service}: {cls}.{name} is {hint}"
    if service != "user":  # users have no lifecycle to speak of
        assert fields, f"{service}'s aggregates have no status: the rule sees nothing"
