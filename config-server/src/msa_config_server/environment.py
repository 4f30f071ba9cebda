"""From files to Spring's ``Environment`` document: which files apply, in which order, flattened how.

This is the heart of what Spring Cloud Config does, in plain Python:

* **Which files**: ``application.*`` applies to every application, ``{app}.*`` to one, ``{app}-{profile}.*`` to
  one application in one profile, ``application-{profile}.*`` to every application in that profile.
* **Which order**: ``propertySources`` is listed *highest precedence first*; a client takes the first source
  that defines a key. Profile-specific beats plain, app-specific beats ``application``, and with several
  profiles (``dev,eu``) the *later* profile wins.
* **Which shape**: every source is flat, with Spring's relaxed-binding keys (``a.b.c``, ``a.list[0]``), exactly
  as a ``.properties`` file would say it; YAML nesting is a notation, not structure the client sees.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from typing import Any, Mapping, Sequence

import yaml

from msa_config_server.repository import Checkout, RawFile, Repository

__all__ = [
    "BrokenFileError",
    "InvalidRequestError",
    "EXTENSIONS",
    "parse_profiles",
    "candidate_basenames",
    "candidate_filenames",
    "parse_file",
    "parse_properties",
    "flatten",
    "build_environment",
    "merge_sources",
    "unflatten",
    "resolve_placeholders",
    "render_properties",
    "render_yaml",
    "render_json",
]

# Within one base name Spring Boot loads every format present, .properties taking precedence over YAML.
EXTENSIONS = (".properties", ".yml", ".yaml")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class BrokenFileError(Exception):
    """A file in the repository cannot be parsed. Serving the rest would hand out silently partial config."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"cannot parse {filename}: {reason}")
        self.filename = filename
        self.reason = reason


class InvalidRequestError(ValueError):
    """An application or profile name that cannot name a file (Spring answers 400)."""


def _check_name(kind: str, value: str) -> str:
    # Names become file names: refuse anything that could walk out of the repository or hide a file.
    if not _NAME_RE.match(value) or ".." in value:
        raise InvalidRequestError(f"invalid {kind} name {value!r}: use letters, digits, '_', '-' and '.'")
    return value


def parse_profiles(profiles: str) -> list[str]:
    names = [p.strip() for p in profiles.split(",") if p.strip()]
    if not names:
        raise InvalidRequestError("no profile given: use e.g. 'default' or 'dev,eu'")
    return [_check_name("profile", p) for p in names]


def candidate_basenames(application: str, profiles: Sequence[str]) -> list[str]:
    """File base names in precedence order, highest first (Spring's order for a single application)."""
    _check_name("application", application)
    apps = [application] if application == "application" else [application, "application"]
    ordered: list[str] = []
    for profile in reversed(profiles):  # the last profile listed wins
        ordered += [f"{app}-{profile}" for app in apps]
    ordered += apps
    return list(dict.fromkeys(ordered))  # a profile named twice counts once, at its highest position


def candidate_filenames(application: str, profiles: Sequence[str]) -> list[str]:
    return [base + ext for base in candidate_basenames(application, profiles) for ext in EXTENSIONS]


# --- parsing and flattening ---------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    # Keep JSON's types (a port stays a number, a flag a boolean) and stringify what JSON cannot carry.
    if value is None:
        return ""  # Spring's YamlProcessor maps an empty value to ""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return str(value)


def flatten(document: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → Spring's flat keys, as YamlProcessor.getFlattenedMap does it."""
    flat: dict[str, Any] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value:
                flat[path] = ""
            for k, v in value.items():
                key = str(k)
                walk(key if not path else (path + key if key.startswith("[") else f"{path}.{key}"), v)
        elif isinstance(value, (list, tuple, set)):
            if not value:
                flat[path] = ""
            for i, item in enumerate(value):
                walk(f"{path}[{i}]", item)
        else:
            flat[path] = _scalar(value)

    for k, v in document.items():
        walk(f"{prefix}{k}", v)
    return flat


_PROPERTIES_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_PROPERTIES_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """java.util.Properties.load: ``k=v``, ``k: v`` or ``k v``; ``#``/``!`` comments; ``\\`` continues a line."""
    result: dict[str, str] = {}
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.lstrip()
        if not line or line[0] in "#!":
            continue
        # A line ending in an odd number of backslashes continues on the next, minus its indentation.
        while (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            line = line[:-1] + next(lines, "").lstrip()
        i = 0
        while i < len(line) and line[i] not in "=: \t\f":
            i += 2 if line[i] == "\\" else 1
        key, rest = line[:i], line[i:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        result[_unescape(key)] = _unescape(rest)
    return result


def _activates(document: Mapping[str, Any], profiles: Sequence[str]) -> bool:
    """Whether a YAML document applies, by its ``spring.config.activate.on-profile`` (or legacy ``spring.profiles``)."""
    condition = document.get("spring.config.activate.on-profile", document.get("spring.profiles"))
    if condition in (None, ""):
        return True
    wanted = [w.strip() for w in str(condition).split(",") if w.strip()]
    return any((w[1:] not in profiles) if w.startswith("!") else (w in profiles) for w in wanted)


def parse_file(file: RawFile, profiles: Sequence[str] = ()) -> dict[str, Any]:
    """One file → one flat property source. Multi-document YAML is merged, later documents winning."""
    try:
        text = file.content.decode("utf-8")
    except UnicodeDecodeError:
        text = file.content.decode("latin-1")  # java.util.Properties' historical encoding
    if file.filename.endswith(".properties"):
        return dict(parse_properties(text))
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise BrokenFileError(file.filename, str(exc).replace("\n", " ")) from exc
    merged: dict[str, Any] = {}
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise BrokenFileError(file.filename, f"a document must be a mapping, not a {type(doc).__name__}")
        flat = flatten(doc)
        if _activates(flat, profiles):
            _overlay(merged, flat)
    return merged


# --- the Environment document -------------------------------------------------------------------------------


def build_environment(
    repository: Repository, application: str, profiles: str, label: str | None = None
) -> dict[str, Any]:
    """``GET /{application}/{profiles}[/{label}]``: Spring's Environment, sources highest precedence first."""
    names = parse_profiles(profiles)
    checkout: Checkout = repository.read(candidate_filenames(application, names), label)
    sources = [
        {"name": f.origin, "source": parse_file(f, names)}
        for name in candidate_filenames(application, names)
        if (f := checkout.files.get(name)) is not None
    ]
    return {
        "name": application,
        "profiles": names,
        "label": label,
        "version": checkout.version,
        "state": None,
        "propertySources": sources,
    }


def _array_stem(key: str) -> str | None:
    return key[: key.index("[")] if "[" in key else None


def _overlay(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    """Put ``source`` over ``target``. A list is replaced whole, never merged element by element: a higher
    source saying ``hosts: [a]`` must not inherit ``hosts[1]`` from a lower one (Spring Boot binds lists so)."""
    stems = {s for k in source if (s := _array_stem(k))}
    for stem in stems:
        for key in [k for k in target if k.startswith(stem + "[")]:
            del target[key]
    target.update(source)


def merge_sources(environment: Mapping[str, Any]) -> dict[str, Any]:
    """All property sources folded into one flat map with the highest-precedence value for each key, sorted
    by key as Spring's ``.properties`` endpoint does."""
    merged: dict[str, Any] = {}
    for source in reversed(environment["propertySources"]):
        _overlay(merged, source["source"])
    merged.pop("spring.profiles", None)  # a file-selection instruction, not configuration (as Spring drops it)
    return dict(sorted(merged.items()))


_PATH_RE = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


def _path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for m in _PATH_RE.finditer(key):
        index, name = m.group(1), m.group(2)
        parts.append(name if index is None else (int(index) if index.isdigit() else index))
    return parts


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat Spring keys → nested maps and lists (the shape of the ``.yml`` and ``.json`` documents)."""
    root: dict[Any, Any] = {}
    for key, value in flat.items():
        node = root
        path = _path(key) or [key]
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):  # a scalar here loses to the deeper key: structure wins
                child = node[part] = {}
            node = child
        node[path[-1]] = value

    def finish(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(isinstance(k, int) for k in node):
            items = [""] * (max(node) + 1)  # gaps become "", as Spring fills them
            for i, v in node.items():
                items[i] = finish(v)
            return items
        return {str(k): finish(v) for k, v in node.items()}

    return finish(root)


_PLACEHOLDER_RE = re.compile(r"(\\?)\$\{([^${}]+)\}")


def resolve_placeholders(flat: Mapping[str, Any], max_depth: int = 10) -> dict[str, Any]:
    """``${key}`` and ``${key:default}`` resolved against the merged map; unresolvable ones are left as written
    and ``\\${...}`` is kept for the client to resolve (Spring's escape)."""

    def resolve(text: str, depth: int) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1):
                return m.group(0)
            name, _, default = m.group(2).partition(":")
            if name in flat:
                value = flat[name]
                return resolve(str(_render_scalar(value)), depth + 1) if depth < max_depth else str(value)
            return default if ":" in m.group(2) else m.group(0)

        return _PLACEHOLDER_RE.sub(sub, text)

    resolved = {k: resolve(v, 0) if isinstance(v, str) else v for k, v in flat.items()}
    return {k: v.replace("\\${", "${") if isinstance(v, str) else v for k, v in resolved.items()}


def _render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # what Java's toString prints, and what a client binds
    return str(value)


def render_properties(flat: Mapping[str, Any]) -> str:
    """Spring's ``.properties`` view: one ``key: value`` line per key (not escaped, like Spring's)."""
    return "\n".join(f"{k}: {_render_scalar(v)}" for k, v in flat.items())


def render_yaml(flat: Mapping[str, Any]) -> str:
    return yaml.safe_dump(unflatten(flat), default_flow_style=False, sort_keys=False, allow_unicode=True)


def render_json(flat: Mapping[str, Any]) -> str:
    return json.dumps(unflatten(flat), ensure_ascii=False)
