"""A small subset of Consul's `?filter=` language (hashicorp/go-bexpr), evaluated on the JSON we answer with.

Supported:  "x" in Service.Tags · "x" not in ... · Service.Meta.version == "v" · != · contains · not contains ·
matches "regex" · is empty · is not empty · and · or · not · ( ... ).
Selectors are dotted paths into one result row, e.g. Service.Meta.version for /v1/health/service rows,
ServiceMeta.version for catalog rows, Meta.version for /v1/agent/services values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["FilterError", "compile_filter"]

Predicate = Callable[[Any], bool]
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<op>==|!=|\(|\))|(?P<word>[A-Za-z0-9_.\-/:]+))')


class FilterError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"syntax error at position {pos}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        val = m.group(kind)
        if kind == "str":
            val = val[1:-1].replace('\\"', '"') if val[0] == '"' else val[1:-1]
        out.append((kind, val))
        pos = m.end()
    return out


def _resolve(row: Any, selector: str) -> Any:
    cur = row
    for part in selector.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else "" if v is None else str(v)


def _contains(container: Any, value: str) -> bool:
    if isinstance(container, (list, tuple)):
        return value in [_text(x) for x in container]
    if isinstance(container, dict):
        return value in container
    return isinstance(container, str) and value in container


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks, self.i = _tokens(text), 0

    def peek(self, n: int = 0) -> tuple[str, str] | None:
        return self.toks[self.i + n] if self.i + n < len(self.toks) else None

    def word(self, *options: str) -> bool:
        t = self.peek()
        if t and t[0] == "word" and t[1] in options:
            self.i += 1
            return True
        return False

    def take(self, kind: str | None = None) -> str:
        t = self.peek()
        if t is None or (kind and t[0] != kind):
            raise FilterError(f"unexpected {'end of expression' if t is None else repr(t[1])}")
        self.i += 1
        return t[1]

    def value(self) -> str:
        t = self.peek()
        if t is None or t[0] == "op":
            raise FilterError("expected a value")
        return self.take()

    def parse(self) -> Predicate:
        pred = self.or_()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def or_(self) -> Predicate:
        left = self.and_()
        while self.word("or"):
            right, prev = self.and_(), left
            left = lambda r, a=prev, b=right: a(r) or b(r)  # noqa: E731
        return left

    def and_(self) -> Predicate:
        left = self.unary()
        while self.word("and"):
            right, prev = self.unary(), left
            left = lambda r, a=prev, b=right: a(r) and b(r)  # noqa: E731
        return left

    def unary(self) -> Predicate:
        if self.word("not"):
            inner = self.unary()
            return lambda r: not inner(r)
        if self.peek() == ("op", "("):
            self.i += 1
            inner = self.or_()
            if self.take() != ")":
                raise FilterError("missing ')'")
            return inner
        return self.match()

    def match(self) -> Predicate:
        first = self.peek()
        if first and first[0] == "str":  # "value" [not] in Selector
            value = self.take()
            negate = self.word("not")
            if not self.word("in"):
                raise FilterError("expected 'in' after a quoted value")
            sel = self.take("word")
            return lambda r: _contains(_resolve(r, sel), value) != negate
        sel = self.take("word")
        t = self.peek()
        if t == ("op", "=="):
            self.i += 1
            v = self.value()
            return lambda r: _text(_resolve(r, sel)) == v
        if t == ("op", "!="):
            self.i += 1
            v = self.value()
            return lambda r: _text(_resolve(r, sel)) != v
        if self.word("is"):
            negate = self.word("not")
            if not self.word("empty"):
                raise FilterError("expected 'empty'")
            return lambda r: (not _resolve(r, sel)) != negate
        negate = self.word("not")
        if self.word("contains"):
            v = self.value()
            return lambda r: _contains(_resolve(r, sel), v) != negate
        if self.word("matches"):
            try:
                rx = re.compile(self.value())
            except re.error as e:
                raise FilterError(f"invalid regular expression: {e}") from None
            return lambda r: bool(rx.search(_text(_resolve(r, sel)))) != negate
        raise FilterError(f"expected an operator after {sel!r}")


def compile_filter(text: str) -> Predicate:
    """Compile once, then apply to each row; raises FilterError with a reason for a 400."""
    if not text.strip():
        return lambda r: True
    return _Parser(text).parse()
