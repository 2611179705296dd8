"""A small subset of CEL (Common Expression Language), enough for expressions over a response's usage.

Upstream's `request-attribute-reporter` evaluates CEL with cel-go over `usage` as a protobuf Struct (so
its numbers are doubles). This module parses and evaluates the part of CEL such expressions use:
literals (int, double, string, bool, null), the variables given, field selection (`usage.prompt_tokens`,
`usage["x"]`), `has(a.b)`, `int()`, `double()`, `size()`, unary `!` and `-`, `* / %`, `+ -`,
comparisons, `&&`, `||` and `? :`. Anything else is a compile error naming what is not supported.
Semantics follow CEL: int and double do not mix in arithmetic (`usage.prompt_tokens + 1` is an error,
`+ 1.0` is not), integer division truncates, `&&` / `||` absorb an error when the other side decides, a
missing field is an error (test it with `has`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CelError", "CelProgram", "compile_cel"]


class CelError(ValueError):
    """A compile error (bad or unsupported syntax) or an evaluation error."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<float>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<int>0x[0-9a-fA-F]+|\d+)(?P<uint>[uU])?
    | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>\|\||&&|==|!=|<=|>=|[<>+\-*/%!?:().,\[\]])
    )""",
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    src = source.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise CelError(f"unexpected character {src[pos:].lstrip()[:1]!r} at offset {pos}")
        kind = next(k for k in ("float", "int", "str", "ident", "op") if m.group(k) is not None)
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(_Tok("end", "", len(src)))
    return out


Node = Callable[[Mapping[str, Any]], Any]


class _Missing(Exception):
    """A field that is not there (distinct from other errors so `has` can tell)."""


class _Parser:
    def __init__(self, source: str, variables: frozenset[str]) -> None:
        self.toks = _tokens(source)
        self.i = 0
        self.variables = variables

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if text is not None and tok.text != text:
            got = repr(tok.text) if tok.kind != "end" else "the end"
            raise CelError(f"expected {text!r} at offset {tok.pos}, got {got}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.ternary()
        if self.peek().kind != "end":
            tok = self.peek()
            raise CelError(f"unexpected {tok.text!r} at offset {tok.pos}")
        return node

    def ternary(self) -> Node:
        cond = self.logical("||", self.and_)
        if self.peek().text != "?":
            return cond
        self.take("?")
        yes = self.ternary()
        self.take(":")
        no = self.ternary()

        def pick(env: Mapping[str, Any]) -> Any:
            c = cond(env)
            if not isinstance(c, bool):
                raise CelError(f"a condition must be a bool, got {_type(c)}")
            return yes(env) if c else no(env)

        return pick

    def and_(self) -> Node:
        return self.logical("&&", self.relation)

    def logical(self, op: str, operand: Callable[[], Node]) -> Node:
        node = operand()
        while self.peek().text == op:
            self.take(op)
            node = _logical(op, node, operand())
        return node

    def relation(self) -> Node:
        left = self.additive()
        if self.peek().text in ("==", "!=", "<", "<=", ">", ">="):
            op = self.take().text
            right = self.additive()
            return lambda env: _compare(op, left(env), right(env))
        if self.peek().text == "in":
            raise CelError("the 'in' operator is not supported")
        return left

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            node = _arith(op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.peek().text in ("*", "/", "%"):
            op = self.take().text
            node = _arith(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().text == "!":
            self.take()
            inner = self.unary()
            return lambda env: _not(inner(env))
        if self.peek().text == "-":
            self.take()
            inner = self.unary()
            return lambda env: _neg(inner(env))
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while self.peek().text in (".", "["):
            if self.take().text == ".":
                name = self.take()
                if name.kind != "ident":
                    raise CelError(f"expected a field name at offset {name.pos}")
                if self.peek().text == "(":
                    raise CelError(f"method calls (.{name.text}()) are not supported")
                node = _select(node, name.text)
            else:
                key = self.ternary()
                self.take("]")
                node = _index(node, key)
        return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "int":
            value = int(tok.text, 0)
            return lambda env: value
        if tok.kind == "float":
            f = float(tok.text)
            return lambda env: f
        if tok.kind == "str":
            s = _unquote(tok.text)
            return lambda env: s
        if tok.kind == "ident":
            return self.identifier(tok)
        if tok.text == "(":
            node = self.ternary()
            self.take(")")
            return node
        got = repr(tok.text) if tok.kind != "end" else "the end"
        raise CelError(f"unexpected {got} at offset {tok.pos}")

    def identifier(self, tok: _Tok) -> Node:
        name = tok.text
        if name in ("true", "false"):
            b = name == "true"
            return lambda env: b
        if name == "null":
            return lambda env: None
        if self.peek().text == "(":
            return self.call(tok)
        if name not in self.variables:
            known = ", ".join(sorted(self.variables)) or "none"
            raise CelError(f"undeclared reference to '{name}' (variables: {known})")
        return lambda env: env[name]

    def call(self, tok: _Tok) -> Node:
        self.take("(")
        if tok.text == "has":
            start = self.i
            arg = self.member()
            if (
                self.toks[self.i - 1].kind != "ident"
                or self.toks[self.i - 2].text != "."
                or self.i - start < 3
            ):
                raise CelError("has() takes a field selection, e.g. has(usage.prompt_tokens)")
            self.take(")")
            return _has(arg)
        args = [] if self.peek().text == ")" else [self.ternary()]
        while self.peek().text == ",":
            self.take(",")
            args.append(self.ternary())
        self.take(")")
        fn = _FUNCTIONS.get(tok.text)
        if fn is None:
            raise CelError(
                f"function '{tok.text}' is not supported (supported: has, {', '.join(_FUNCTIONS)})"
            )
        if len(args) != 1:
            raise CelError(f"{tok.text}() takes one argument, got {len(args)}")
        (arg0,) = args
        return lambda env: fn(arg0(env))


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "map"
    return type(value).__name__


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _logical(op: str, left: Node, right: Node) -> Node:
    decisive = op == "||"  # the value that decides: true for ||, false for &&

    def run(env: Mapping[str, Any]) -> bool:
        try:
            a = left(env)
            a_err: Exception | None = None
        except (CelError, _Missing) as exc:
            a, a_err = None, exc
        if a_err is None:
            if not isinstance(a, bool):
                raise CelError(f"'{op}' needs bools, got {_type(a)}")
            if a is decisive:
                return a
        b = right(env)
        if not isinstance(b, bool):
            raise CelError(f"'{op}' needs bools, got {_type(b)}")
        if b is decisive or a_err is None:
            return b
        raise a_err

    return run


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("==", "!="):
        same = bool(a == b) if (_is_num(a) and _is_num(b)) or _type(a) == _type(b) else False
        return same if op == "==" else not same
    if not ((_is_num(a) and _is_num(b)) or (_type(a) == _type(b) and isinstance(a, str))):
        raise CelError(f"no such overload: {_type(a)} {op} {_type(b)}")
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _arith(op: str, left: Node, right: Node) -> Node:
    def run(env: Mapping[str, Any]) -> Any:
        a, b = left(env), right(env)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if not (_is_num(a) and _is_num(b)) or type(a) is not type(b):
            raise CelError(f"no such overload: {_type(a)} {op} {_type(b)}")
        if isinstance(a, int):
            if op in ("/", "%") and b == 0:
                raise CelError("division by zero" if op == "/" else "modulus by zero")
            if op == "/":
                return int(a / b) if (a < 0) != (b < 0) else a // b
            if op == "%":
                return int(math.fmod(a, b))
        elif op == "%":
            raise CelError("no such overload: double % double")
        elif op == "/":
            return a / b if b else (math.copysign(math.inf, a) if a else math.nan)
        return {"+": a + b, "-": a - b, "*": a * b}[op]

    return run


def _not(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError(f"no such overload: !{_type(value)}")
    return not value


def _neg(value: Any) -> Any:
    if not _is_num(value):
        raise CelError(f"no such overload: -{_type(value)}")
    return -value


def _select(node: Node, name: str) -> Node:
    def run(env: Mapping[str, Any]) -> Any:
        obj = node(env)
        if not isinstance(obj, Mapping):
            raise CelError(f"cannot select field '{name}' from {_type(obj)}")
        if name not in obj:
            raise _Missing(f"no such key: {name}")
        return obj[name]

    run.field = (node, name)  # type: ignore[attr-defined]
    return run


def _index(node: Node, key: Node) -> Node:
    def run(env: Mapping[str, Any]) -> Any:
        obj, k = node(env), key(env)
        if not isinstance(obj, Mapping):
            raise CelError(f"cannot index {_type(obj)}")
        if k not in obj:
            raise _Missing(f"no such key: {k}")
        return obj[k]

    return run


def _has(selection: Node) -> Node:
    parent, name = selection.field  # type: ignore[attr-defined]

    def run(env: Mapping[str, Any]) -> bool:
        obj = parent(env)
        if not isinstance(obj, Mapping):
            raise CelError(f"has() on {_type(obj)}")
        return name in obj

    return run


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CelError(f"no such overload: int({_type(value)})")
    try:
        return int(value)
    except (ValueError, OverflowError) as exc:
        raise CelError(f"int() of {value!r}: {exc}") from None


def _to_double(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CelError(f"no such overload: double({_type(value)})")
    try:
        return float(value)
    except ValueError as exc:
        raise CelError(f"double() of {value!r}: {exc}") from None


def _size(value: Any) -> int:
    if isinstance(value, str | Mapping | list):
        return len(value)
    raise CelError(f"no such overload: size({_type(value)})")


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {"int": _to_int, "double": _to_double, "size": _size}


@dataclass(frozen=True, slots=True)
class CelProgram:
    """A compiled expression; `evaluate` raises CelError (a missing field included)."""

    source: str
    _node: Node

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        try:
            return self._node(env)
        except _Missing as exc:
            raise CelError(str(exc)) from None


def compile_cel(source: str, variables: frozenset[str]) -> CelProgram:
    """Parse `source`; CelError says what is wrong or not supported."""
    if not source.strip():
        raise CelError("empty expression")
    return CelProgram(source, _Parser(source, variables).parse())
