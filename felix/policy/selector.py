"""Calico's label selector language: parser, evaluator, canonical form and label restrictions.

Design note
-----------
A selector is parsed once into a small immutable tree (:class:`Node` subclasses) and then used
three ways:

* **evaluated** against label maps, millions of times during a snapshot. The tree is compiled into
  nested closures (``Selector.matches``): one Python call per node with every constant bound, about
  twice as fast as walking the tree with ``isinstance`` dispatch (``&&``/``||`` of up to four
  operands in one closure: a generator driven by ``all()`` cost more than the operands);
* **printed canonically** (``Selector.canonical``): operands of ``&&``/``||`` flattened, deduplicated
  and sorted, set literals sorted, ``!!x`` folded, ``all()``/``global()`` absorbed. Two selectors
  that differ only in spelling get the same text, so they share one ip set and one index entry;
* **restricted** (``Selector.restrictions``): the labels an item *must* carry to match (``a == 'x'``
  needs ``a`` = ``x``; ``has(a)`` needs ``a``). The label index uses them to touch only the
  selectors that could match an item, and only the items that could match a selector.

Grammar and semantics are Calico's (libcalico-go's tokenizer and parser), including its quirks:
whitespace is spaces and tabs only; label keys are ``[A-Za-z0-9_./-]{1,512}``; strings are single-
or double-quoted with no escapes; ``has(`` and ``all(`` are keywords only when written without a
space before the parenthesis; ``!`` binds tighter than ``&&``, which binds tighter than ``||``;
``k != 'v'`` and ``k not in {...}`` are true when ``k`` is absent, while ``==``, ``in``,
``contains``, ``starts with`` and ``ends with`` are false; ``global()`` matches everything (typha
has already rewritten the namespace-selector meaning of ``all()``/``global()``); the empty selector
is ``all()``.

The obvious alternative, a regex-and-``eval`` translation into Python expressions, would be shorter
and is exactly what must not be done with a string that comes from any user of the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "MAX_SELECTOR_LENGTH",
    "Selector",
    "SelectorError",
    "parse",
]

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]

MAX_SELECTOR_LENGTH = 64 * 1024  # bounded work per selector; Calico's own limit is the object size
_MAX_DEPTH = 100  # nesting of parentheses / negations: recursion stays far from Python's limit
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_MAX_KEY = 512
_WS = " \t"


class SelectorError(ValueError):
    """A selector that does not parse; the message names the position and what was expected."""

    def __init__(self, text: str, pos: int, problem: str) -> None:
        shown = text if len(text) <= 200 else text[:200] + "..."
        super().__init__(f"bad selector {shown!r} at character {pos}: {problem}")
        self.text = text
        self.pos = pos
        self.problem = problem


# -- the tree ---------------------------------------------------------------------------------------


class Node:
    """A selector node. Immutable; ``canon`` is the canonical text, computed at construction."""

    __slots__ = ("canon",)
    canon: str

    def compile(self) -> Predicate:
        raise NotImplementedError

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        """Labels required to match: key -> allowed values (None: any value). Sound, not complete."""
        return {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.canon == self.canon

    def __hash__(self) -> int:
        return hash(self.canon)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.canon}>"


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class All(Node):
    __slots__ = ()

    def __init__(self) -> None:
        self.canon = "all()"

    def compile(self) -> Predicate:
        return lambda labels: True


class Nothing(Node):
    """Produced by canonicalisation only (``k in {}``, ``!all()``): matches no item."""

    __slots__ = ()

    def __init__(self) -> None:
        self.canon = "!all()"

    def compile(self) -> Predicate:
        return lambda labels: False


class Has(Node):
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key
        self.canon = f"has({key})"

    def compile(self) -> Predicate:
        key = self.key
        return lambda labels: key in labels

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        return {self.key: None}


class Compare(Node):
    """``key <op> 'value'`` for ==, !=, contains, starts with, ends with."""

    __slots__ = ("key", "op", "value")

    def __init__(self, key: str, op: str, value: str) -> None:
        self.key, self.op, self.value = key, op, value
        self.canon = f"{key} {op} {_quote(value)}"

    def compile(self) -> Predicate:
        key, value, op = self.key, self.value, self.op
        if op == "==":
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value  # absent counts as "not equal"
        if op == "contains":
            return lambda labels: key in labels and value in labels[key]
        if op == "starts with":
            return lambda labels: key in labels and labels[key].startswith(value)
        return lambda labels: key in labels and labels[key].endswith(value)

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        if self.op == "==":
            return {self.key: frozenset((self.value,))}
        if self.op == "!=":
            return {}
        return {self.key: None}


class InSet(Node):
    __slots__ = ("key", "negated", "values")

    def __init__(self, key: str, values: Iterable[str], negated: bool) -> None:
        self.key, self.values, self.negated = key, frozenset(values), negated
        body = ", ".join(_quote(v) for v in sorted(self.values))
        self.canon = f"{key} {'not in' if negated else 'in'} {{{body}}}"

    def compile(self) -> Predicate:
        key, values = self.key, self.values
        if self.negated:
            return lambda labels: labels.get(key) not in values if key in labels else True
        return lambda labels: key in labels and labels[key] in values

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        return {} if self.negated else {self.key: self.values}


class Not(Node):
    __slots__ = ("operand",)

    def __init__(self, operand: Node) -> None:
        self.operand = operand
        inner = operand.canon
        self.canon = "!" + (f"({inner})" if isinstance(operand, (And, Or, Compare, InSet)) else inner)

    def compile(self) -> Predicate:
        inner = self.operand.compile()
        return lambda labels: not inner(labels)


class And(Node):
    __slots__ = ("operands",)

    def __init__(self, operands: tuple[Node, ...]) -> None:
        self.operands = operands
        self.canon = " && ".join(f"({o.canon})" if isinstance(o, Or) else o.canon for o in operands)

    def compile(self) -> Predicate:
        return _all_of(tuple(o.compile() for o in self.operands))

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        out: dict[str, frozenset[str] | None] = {}
        for o in self.operands:
            for key, values in o.restrictions().items():
                if key not in out:
                    out[key] = values
                elif values is not None:
                    prev = out[key]
                    out[key] = values if prev is None else prev & values
        return out


class Or(Node):
    __slots__ = ("operands",)

    def __init__(self, operands: tuple[Node, ...]) -> None:
        self.operands = operands
        self.canon = " || ".join(o.canon for o in operands)

    def compile(self) -> Predicate:
        return _any_of(tuple(o.compile() for o in self.operands))

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        # A label is required only if every branch requires it; the allowed values are the union.
        first, *rest = (o.restrictions() for o in self.operands)
        out: dict[str, frozenset[str] | None] = {}
        for key, values in first.items():
            merged: frozenset[str] | None = values
            for r in rest:
                if key not in r:
                    break
                other = r[key]
                merged = None if merged is None or other is None else merged | other
            else:
                out[key] = merged
        return out


def _all_of(preds: tuple[Predicate, ...]) -> Predicate:
    """One closure for ``p1 && p2 && ...``, up to four operands inline: a generator driven by
    ``all()`` costs more than the operands' own calls, and a cold start evaluates 100,000s."""
    if len(preds) == 2:
        a, b = preds
        return lambda labels: a(labels) and b(labels)
    if len(preds) == 3:
        a, b, c = preds
        return lambda labels: a(labels) and b(labels) and c(labels)
    if len(preds) == 4:
        a, b, c, d = preds
        return lambda labels: a(labels) and b(labels) and c(labels) and d(labels)
    return lambda labels: all(p(labels) for p in preds)


def _any_of(preds: tuple[Predicate, ...]) -> Predicate:
    """One closure for ``p1 || p2 || ...`` (as ``_all_of``)."""
    if len(preds) == 2:
        a, b = preds
        return lambda labels: a(labels) or b(labels)
    if len(preds) == 3:
        a, b, c = preds
        return lambda labels: a(labels) or b(labels) or c(labels)
    if len(preds) == 4:
        a, b, c, d = preds
        return lambda labels: a(labels) or b(labels) or c(labels) or d(labels)
    return lambda labels: any(p(labels) for p in preds)


# -- canonicalisation (builders used by the parser) ------------------------------------------------


def _not(operand: Node) -> Node:
    if isinstance(operand, Not):
        return operand.operand
    if isinstance(operand, All):
        return Nothing()
    if isinstance(operand, Nothing):
        return All()
    return Not(operand)


def _and(operands: list[Node]) -> Node:
    flat: dict[str, Node] = {}
    for o in operands:
        for sub in o.operands if isinstance(o, And) else (o,):
            if isinstance(sub, Nothing):
                return sub
            if not isinstance(sub, All):
                flat.setdefault(sub.canon, sub)
    if not flat:
        return All()
    if len(flat) == 1:
        return next(iter(flat.values()))
    return And(tuple(flat[k] for k in sorted(flat)))


def _or(operands: list[Node]) -> Node:
    flat: dict[str, Node] = {}
    for o in operands:
        for sub in o.operands if isinstance(o, Or) else (o,):
            if isinstance(sub, All):
                return sub
            if not isinstance(sub, Nothing):
                flat.setdefault(sub.canon, sub)
    if not flat:
        return Nothing()
    if len(flat) == 1:
        return next(iter(flat.values()))
    return Or(tuple(flat[k] for k in sorted(flat)))


def _in(key: str, values: list[str], negated: bool) -> Node:
    if not values:
        return All() if negated else Nothing()
    if len(set(values)) == 1:
        return Compare(key, "!=" if negated else "==", values[0])
    return InSet(key, values, negated)


# -- tokenizer and parser -------------------------------------------------------------------------

# Token kinds
_EOF, _LABEL, _STR, _OP, _PUNCT, _HAS, _ALL, _GLOBAL, _NOT, _AND, _OR = range(11)
_AFTER_LABEL = (("contains", "contains"), ("starts", "starts with"), ("ends", "ends with"), ("not", "not in"))


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: int
    value: str
    pos: int


def _key_at(text: str, i: int) -> int:
    """End of the label key starting at ``i`` (== i when there is none)."""
    j = i
    n = len(text)
    while j < n and text[j] in _KEY_CHARS:
        j += 1
    return j


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            toks.append(_Tok(_EOF, "", i))
            return toks
        c = text[i]
        last = toks[-1].kind if toks else None
        if c in "(){},":
            toks.append(_Tok(_PUNCT, c, i))
            i += 1
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorError(text, i, "unterminated string")
            toks.append(_Tok(_STR, text[i + 1 : end], i))
            i = end + 1
        elif c == "=":
            if text.startswith("==", i):
                toks.append(_Tok(_OP, "==", i))
                i += 2
            else:
                raise SelectorError(text, i, "expected '=='")
        elif c == "!":
            if text.startswith("!=", i):
                toks.append(_Tok(_OP, "!=", i))
                i += 2
            else:
                toks.append(_Tok(_NOT, "!", i))
                i += 1
        elif c in "&|":
            if text.startswith(c * 2, i):
                toks.append(_Tok(_AND if c == "&" else _OR, c * 2, i))
                i += 2
            else:
                raise SelectorError(text, i, f"expected '{c * 2}'")
        elif last == _LABEL:
            i = _operator(text, i, toks)
        elif text.startswith("has(", i):
            start = i
            i = _skip_ws(text, i + 4)
            end = _key_at(text, i)
            if end == i:
                raise SelectorError(text, i, "expected a label name in has()")
            if end - i > _MAX_KEY:
                raise SelectorError(text, i, f"label name longer than {_MAX_KEY} characters")
            key = text[i:end]
            i = _skip_ws(text, end)
            if not text.startswith(")", i):
                raise SelectorError(text, i, "expected ')' after has(label")
            toks.append(_Tok(_HAS, key, start))
            i += 1
        elif text.startswith("all(", i) or text.startswith("global(", i):
            kind, start = (_ALL, i) if text.startswith("all(", i) else (_GLOBAL, i)
            i = _skip_ws(text, i + (4 if kind == _ALL else 7))
            if not text.startswith(")", i):
                raise SelectorError(text, i, "expected ')'")
            toks.append(_Tok(kind, "", start))
            i += 1
        else:
            end = _key_at(text, i)
            if end == i:
                raise SelectorError(text, i, f"unexpected character {c!r}")
            if end - i > _MAX_KEY:
                raise SelectorError(text, i, f"label name longer than {_MAX_KEY} characters")
            toks.append(_Tok(_LABEL, text[i:end], i))
            i = end


def _operator(text: str, i: int, toks: list[_Tok]) -> int:
    """After a label: contains, starts with, ends with, not in, in (Calico matches them as prefixes)."""
    for word, op in _AFTER_LABEL:
        if text.startswith(word, i):
            j = i + len(word)
            if op != word:
                j = _skip_ws(text, j)
                second = op.split(" ")[1]
                if not text.startswith(second, j):
                    raise SelectorError(text, j, f"expected {op!r}")
                j += len(second)
            toks.append(_Tok(_OP, op, i))
            return j
    if text.startswith("in", i):
        toks.append(_Tok(_OP, "in", i))
        return i + 2
    raise SelectorError(text, i, f"expected an operator after label {toks[-1].value!r}")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def fail(self, problem: str) -> SelectorError:
        return SelectorError(self.text, self.toks[self.i].pos, problem)

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != _EOF:
            self.i += 1
        return t

    def parse(self) -> Node:
        if self.peek().kind == _EOF:
            return All()
        node = self.or_expr(0)
        if self.peek().kind != _EOF:
            raise self.fail("unexpected content after the end of the expression")
        return node

    def or_expr(self, depth: int) -> Node:
        ops = [self.and_expr(depth)]
        while self.peek().kind == _OR:
            self.take()
            ops.append(self.and_expr(depth))
        return _or(ops)

    def and_expr(self, depth: int) -> Node:
        ops = [self.operation(depth)]
        while self.peek().kind == _AND:
            self.take()
            ops.append(self.operation(depth))
        return _and(ops)

    def operation(self, depth: int) -> Node:
        negated = False
        while self.peek().kind == _NOT:
            self.take()
            negated = not negated
        node = self.primary(depth)
        return _not(node) if negated else node

    def primary(self, depth: int) -> Node:
        t = self.peek()
        if t.kind == _EOF:
            raise self.fail("unexpected end of selector")
        if t.kind == _PUNCT and t.value == "(" and depth >= _MAX_DEPTH:
            raise self.fail(f"nested deeper than {_MAX_DEPTH} levels")
        self.take()
        if t.kind == _HAS:
            return Has(t.value)
        if t.kind in (_ALL, _GLOBAL):
            return All()  # global() matches everything in a plain selector, as in Calico
        if t.kind == _LABEL:
            return self.comparison(t.value)
        if t.kind == _PUNCT and t.value == "(":
            node = self.or_expr(depth + 1)
            if not (self.peek().kind == _PUNCT and self.peek().value == ")"):
                raise self.fail("expected ')'")
            self.take()
            return node
        self.i -= 1
        raise self.fail(f"unexpected {t.value!r}")

    def comparison(self, key: str) -> Node:
        op = self.take()
        if op.kind != _OP:  # the tokenizer lets only an operator or punctuation follow a label
            self.i -= 1
            raise self.fail(f"expected an operator after label {key!r}")
        if op.value in ("in", "not in"):
            if not (self.peek().kind == _PUNCT and self.peek().value == "{"):
                raise self.fail("expected '{' (a set literal)")
            self.take()
            values: list[str] = []
            while self.peek().kind == _STR:
                values.append(self.take().value)
                if self.peek().kind == _PUNCT and self.peek().value == ",":
                    self.take()
                else:
                    break
            if not (self.peek().kind == _PUNCT and self.peek().value == "}"):
                raise self.fail("expected '}' or a quoted string")
            self.take()
            return _in(key, values, op.value == "not in")
        if self.peek().kind != _STR:
            raise self.fail(f"expected a quoted string after {op.value!r}")
        return Compare(key, op.value, self.take().value)


# -- the public object ---------------------------------------------------------------------------


class Selector:
    """A parsed selector. Equal (and hashable) by canonical text."""

    __slots__ = ("canonical", "matches", "root")

    def __init__(self, root: Node) -> None:
        self.root = root
        self.canonical: str = root.canon
        self.matches: Predicate = root.compile()

    def restrictions(self) -> dict[str, frozenset[str] | None]:
        """Labels an item must carry to match: key -> allowed values, or None for any value.

        An empty value set means the selector can never match.
        """
        if isinstance(self.root, Nothing):
            return {"": frozenset()}
        return self.root.restrictions()

    @property
    def never(self) -> bool:
        return any(v is not None and not v for v in self.restrictions().values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.canonical == self.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __repr__(self) -> str:
        return f"Selector({self.canonical!r})"

    def __str__(self) -> str:
        return self.canonical


ALL = Selector(All())


@lru_cache(maxsize=8192)
def parse(text: str) -> Selector:
    """Parse selector text; raises :class:`SelectorError`. Cached: policies repeat selectors a lot."""
    if not isinstance(text, str):
        raise SelectorError(repr(text), 0, "not a string")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(text, MAX_SELECTOR_LENGTH, f"longer than {MAX_SELECTOR_LENGTH} characters")
    return Selector(_Parser(text).parse())
