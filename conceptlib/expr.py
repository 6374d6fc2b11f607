"""The composition language: concepts combined by logic on their energies.

``shape=cube & !color=red | 0.5*pos@stable=(0.2,0.7)`` parses to a small immutable AST. The energies
combine as AND = sum, OR = -logsumexp(-E), NOT = -E, and a weight scales E; this module only handles
the text, so the AST is plain data that the sampler evaluates and the registry resolves.

Grammar, loosest first: ``expr := and ('|' and)*``, ``and := unary ('&' unary)*``,
``unary := '!' unary | NUMBER '*' unary | '(' expr ')' | leaf``,
``leaf := NAME ('@' (INT | NAME))? '=' value``, ``value := NAME | NUMBER | '(' NUMBER (',' NUMBER)* ')'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, NoReturn, Protocol, TypeVar

from conceptlib.errors import ExpressionError
from conceptlib.limits import MAX_WEIGHT
from conceptlib.names import NAME
from conceptlib.schema import Value, format_value

MAX_DEPTH = 100
"""Deepest nesting of '(', '!' and weights accepted: deeper input would exhaust Python's stack."""

MAX_ALTERNATIVES = 256
"""Most OR-free alternatives an expression may expand into (:func:`alternatives`): each OR under an AND
multiplies them, and a denoiser prior samples each alternative as its own composition."""

GRAMMAR = """\
\b
EXPRESSION, loosest first:
  a | b           either: OR; 0.3*a | 0.7*b draws a 30 % of the time
  a & b           both: AND, E_a + E_b
  a & !b          a, not b: NOT sits inside an AND with a positive term
  0.5*a           a term's energy weighted by a positive number
  (a | b) & c     parentheses group
  NAME[@V]=VALUE  a concept at a condition; @V: a version number or alias;
                  VALUE: a name (red), a number (0.12), a tuple ((0.3,0.7))
"""
"""The grammar above for people (``concept compose --help``); ``\\b`` keeps click from rewrapping it."""

NOT_PLACEMENT = "NOT must sit inside an AND with a positive term, e.g. 'shape=cube & !color=red'"
BAD_WEIGHT = "weight must be a positive number; use ! to negate"
LARGE_WEIGHT = f"weight must be at most {MAX_WEIGHT:g}: larger ones overflow the energies"


@dataclass(frozen=True)
class Leaf:
    """One concept at one condition value: ``color=red``, ``pos@3=(0.2,0.7)``, ``size=0.5``.

    ``version`` keeps the text after '@' (a version number or an alias) unresolved, because only the
    registry can resolve it. ``position`` is the column of the concept name, for carets (-1 when
    built in code); == and hash ignore it, so parsed and hand-built trees compare equal.
    """

    concept: str
    value: Value
    version: str | None = None
    position: int = field(default=-1, compare=False, repr=False, kw_only=True)


def _require_two(terms: tuple[Node, ...], operator: str) -> None:
    """A one-term chain would print as its term and so not survive ``parse(to_text(...))``."""
    if len(terms) < 2:
        raise ValueError(f"{operator} needs at least 2 terms, got {len(terms)}")


@dataclass(frozen=True)
class And:
    """Energies summed: all terms must hold. One chain ``a & b & c`` is one node."""

    terms: tuple[Node, ...]

    def __post_init__(self) -> None:
        _require_two(self.terms, "And")


@dataclass(frozen=True)
class Or:
    """Energies soft-minimised (-logsumexp(-E)): any term may hold. One chain ``a | b | c`` is one node."""

    terms: tuple[Node, ...]

    def __post_init__(self) -> None:
        _require_two(self.terms, "Or")


@dataclass(frozen=True)
class Not:
    """Energy negated. ``position`` is the column of the '!' (see ``Leaf``)."""

    term: Node
    position: int = field(default=-1, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Weighted:
    """Energy scaled by ``weight`` > 0. ``position`` is the column of the number (see ``Leaf``)."""

    weight: float
    term: Node
    position: int = field(default=-1, compare=False, repr=False, kw_only=True)


Node = Leaf | And | Or | Not | Weighted


def parse(text: str) -> Node:
    """Parse and validate ``text``; any ``ExpressionError`` points at the offending token."""
    node = _Parser(text).parse()
    validate(node, text)
    return node


def validate(node: Node, text: str = "") -> None:
    """Reject trees that parse but mean nothing as energies.

    A NOT alone has no minimum to sample towards (the sampler would run off to wherever the concept
    is least likely), so it must be a term of an AND that also has a positive term to anchor it.
    A weight that is not positive would flip or erase the term, which is what ``!`` is for; one above
    ``MAX_WEIGHT`` would overflow the energies (``1e300*a`` sampled NaN images).
    ``text`` is the source the positions refer to; without it errors point at column 0.
    """
    _check(node, text, negatable=False)
    _expand(node)


def to_text(node: Node) -> str:
    """The canonical spelling of ``node``: ``parse(to_text(node)) == node`` for every valid tree.

    Only the parentheses the grammar needs are written, plus those that keep a nested chain of the
    same operator (``(a & b) & c``) a separate node.
    """
    if isinstance(node, Leaf):
        version = "" if node.version is None else f"@{node.version}"
        return f"{node.concept}{version}={format_value(node.value)}"
    if isinstance(node, And):
        return " & ".join(_grouped(term, (And, Or)) for term in node.terms)
    if isinstance(node, Or):
        return " | ".join(_grouped(term, (Or,)) for term in node.terms)
    if isinstance(node, Not):
        return "!" + _grouped(node.term, (And, Or))
    return f"{float(node.weight)!r}*" + _grouped(node.term, (And, Or))


T = TypeVar("T")


class Algebra(Protocol[T]):
    """What each operator makes of its terms' values: energies, a score and its energy, a list of leaves.

    The composition of energies (:mod:`conceptlib.energy`), noisy energies and scores
    (:mod:`conceptlib.scores`) are each one algebra folded over the same tree (:func:`fold`).
    """

    def and_(self, terms: Sequence[T]) -> T: ...

    def or_(self, terms: Sequence[T]) -> T: ...

    def not_(self, term: T) -> T: ...

    def weighted(self, weight: float, term: T) -> T: ...


def fold(node: Node, leaf: Callable[[Leaf], T], algebra: Algebra[T],
         negated_leaf: Callable[[Leaf], T] | None = None) -> T:
    """The value of ``node``: ``leaf(l)`` at every leaf, combined bottom-up by ``algebra``, terms in source order.

    ``negated_leaf``, when given, answers a NOT directly over a leaf itself (a classifier asked for the
    complement of its condition) instead of ``algebra.not_`` of the leaf's value.
    """
    if isinstance(node, Leaf):
        return leaf(node)
    if isinstance(node, And):
        return algebra.and_([fold(term, leaf, algebra, negated_leaf) for term in node.terms])
    if isinstance(node, Or):
        return algebra.or_([fold(term, leaf, algebra, negated_leaf) for term in node.terms])
    if isinstance(node, Not):
        if negated_leaf is not None and isinstance(node.term, Leaf):
            return negated_leaf(node.term)
        return algebra.not_(fold(node.term, leaf, algebra, negated_leaf))
    if isinstance(node, Weighted):
        return algebra.weighted(node.weight, fold(node.term, leaf, algebra, negated_leaf))
    raise TypeError(f"not an expression node: {node!r}")


class _Rebuild:
    """The tree itself (without source positions): :func:`map_leaves`' algebra."""

    def and_(self, terms: Sequence[Node]) -> Node:
        return And(tuple(terms))

    def or_(self, terms: Sequence[Node]) -> Node:
        return Or(tuple(terms))

    def not_(self, term: Node) -> Node:
        return Not(term)

    def weighted(self, weight: float, term: Node) -> Node:
        return Weighted(weight, term)


def map_leaves(node: Node, replace: Callable[[Leaf], Node]) -> Node:
    """``node`` with every leaf replaced by ``replace(leaf)`` (e.g. weighted); source positions are dropped."""
    return fold(node, replace, _Rebuild())


def map_negated_leaves(node: Node, replace: Callable[[Leaf], Node]) -> Node:
    """``node`` with every NOT directly over a leaf replaced by ``replace(leaf)``; source positions are dropped."""
    return fold(node, lambda leaf: leaf, _Rebuild(), negated_leaf=replace)


@dataclass(frozen=True)
class _Collect:
    """Leaves in source order; ``negated`` says whether the leaves under a NOT count."""

    negated: bool

    def and_(self, terms: Sequence[list[Leaf]]) -> list[Leaf]:
        return [leaf for term in terms for leaf in term]

    or_ = and_

    def not_(self, term: list[Leaf]) -> list[Leaf]:
        return term if self.negated else []

    def weighted(self, weight: float, term: list[Leaf]) -> list[Leaf]:
        return term


def leaves(node: Node) -> list[Leaf]:
    """Every leaf of ``node`` in left-to-right (source) order."""
    return fold(node, lambda leaf: [leaf], _Collect(negated=True))


def positive_leaves(node: Node) -> list[Leaf]:
    """The leaves the expression asks for: every leaf outside a NOT."""
    return fold(node, lambda leaf: [leaf], _Collect(negated=False))


def conjuncts(node: Node) -> tuple[Node, ...]:
    """The terms of ``node`` when it is an AND, else ``node`` alone: what every sample must show."""
    return node.terms if isinstance(node, And) else (node,)


def replace_leaves(node: Node, replacement: Mapping[Leaf, Leaf]) -> Node:
    """``node`` with every leaf found in ``replacement`` swapped for its value (e.g. a condition filled in)."""
    return map_leaves(node, lambda leaf: replacement.get(leaf, leaf))


def alternatives(node: Node) -> list[tuple[float, Node]]:
    """``node`` as a weighted mixture of OR-free expressions: ``[(share, alternative), ...]``.

    OR adds densities (``exp(-E)``) and AND multiplies them, so AND distributes over OR: ``(a | b) & c`` is
    ``a & c`` or ``b & c``, each a plain composition a denoiser prior samples exactly, where mixing the parts'
    scores by the energies of a noisy image cannot tell them apart at high noise. A weight directly on a term
    of an OR is that term's share of the mixture (``0.3*a | 0.7*b``: ``a`` 30 % of the time); anywhere else
    it scales an energy. An OR under a NOT or a weight is kept as written (it has no mixture reading).
    """
    return [(share, parts[0] if len(parts) == 1 else And(tuple(parts))) for share, parts in _expand(node)]


def _expand(node: Node) -> list[tuple[float, list[Node]]]:
    """:func:`alternatives` as ``(share, conjuncts)`` pairs."""
    if isinstance(node, Or):
        expanded = []
        for term in node.terms:
            share, inner = (term.weight, term.term) if isinstance(term, Weighted) else (1.0, term)
            expanded += [(share * inner_share, parts) for inner_share, parts in _expand(inner)]
        return _bounded(expanded)
    if isinstance(node, And):
        combined: list[tuple[float, list[Node]]] = [(1.0, [])]
        for term in node.terms:
            combined = _bounded([(a * b, first + second) for a, first in combined for b, second in _expand(term)])
        return combined
    return [(1.0, [node])]


def _bounded(expanded: list[tuple[float, list[Node]]]) -> list[tuple[float, list[Node]]]:
    if len(expanded) > MAX_ALTERNATIVES:
        raise ExpressionError(f"this expression expands into more than {MAX_ALTERNATIVES} alternatives (every OR "
                              "inside an AND multiplies them); use fewer ORs", "", 0, located=False)
    return expanded


def _grouped(node: Node, needs_parentheses: tuple[type, ...]) -> str:
    text = to_text(node)
    return f"({text})" if isinstance(node, needs_parentheses) else text


def _check(node: Node, text: str, negatable: bool) -> None:
    """Validate ``node``; ``negatable`` says whether a NOT may sit here (see ``validate``)."""
    if isinstance(node, Not):
        if not negatable:
            raise ExpressionError(NOT_PLACEMENT, text, _column(node.position, text))
        _check(node.term, text, negatable=False)
    elif isinstance(node, Weighted):
        if not (math.isfinite(node.weight) and node.weight > 0):
            raise ExpressionError(BAD_WEIGHT, text, _column(node.position, text))
        if node.weight > MAX_WEIGHT:
            raise ExpressionError(LARGE_WEIGHT, text, _column(node.position, text))
        _check(node.term, text, negatable)
    elif isinstance(node, And):
        anchored = any(not isinstance(_unweighted(term), Not) for term in node.terms)
        for term in node.terms:
            _check(term, text, anchored)
    elif isinstance(node, Or):
        for term in node.terms:
            _check(term, text, negatable=False)


def _unweighted(node: Node) -> Node:
    while isinstance(node, Weighted):
        node = node.term
    return node


def _column(position: int, text: str) -> int:
    """A node's position is only meaningful against the text it was parsed from."""
    return position if text and position >= 0 else 0


class _Token(NamedTuple):
    kind: str  # "number", "name", or the punctuation character itself
    text: str
    position: int


_TOKEN = re.compile(
    r"(?P<number>-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    rf"|(?P<name>{NAME})"
    r"|(?P<punct>[&|!*()@=,])"
)
_VERSION = re.compile(rf"[0-9]+|{NAME}")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = _skip_space(text, 0)
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            char = text[position]
            reason = (
                f"{char!r} must be part of a number such as -0.5 or .5"
                if char in "-."
                else f"unknown character {char!r}"
            )
            raise ExpressionError(reason, text, position)
        kind = match[0] if match.lastgroup == "punct" else str(match.lastgroup)
        tokens.append(_Token(kind, match[0], position))
        position = _skip_space(text, match.end())
    return tokens


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule; ``depth`` bounds recursion."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError("empty expression; write a concept such as 'color=red'", self.text, 0,
                                  located=False)
        node = self.expr(0)
        token = self.peek()
        if token is not None:
            hint = " with no matching '('" if token.kind == ")" else "; join terms with '&' or '|'"
            raise ExpressionError(f"unexpected {token.text!r}{hint}", self.text, token.position)
        return node

    def expr(self, depth: int) -> Node:
        terms = [self.conjunction(depth)]
        while self.accept("|"):
            terms.append(self.conjunction(depth))
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def conjunction(self, depth: int) -> Node:
        terms = [self.unary(depth)]
        while self.accept("&"):
            terms.append(self.unary(depth))
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def unary(self, depth: int) -> Node:
        token = self.peek()
        if token is None:
            self.fail("a concept such as 'color=red'")
        if depth > MAX_DEPTH:
            reason = f"expression nests deeper than {MAX_DEPTH} levels"
            raise ExpressionError(reason, self.text, token.position)
        if self.accept("!"):
            return Not(self.unary(depth + 1), position=token.position)
        if self.accept("number"):
            self.expect("*", f"'*' after weight {token.text!r}")
            return Weighted(self._finite(token), self.unary(depth + 1), position=token.position)
        if self.accept("("):
            node = self.expr(depth + 1)
            self.expect(")", f"')' to close the '(' at column {token.position + 1}")
            return node
        if self.accept("name"):
            return self.leaf(token)
        self.fail("a concept such as 'color=red'")

    def leaf(self, name: _Token) -> Leaf:
        version = None
        if self.accept("@"):
            token = self.peek()
            if token is None or not _VERSION.fullmatch(token.text):
                self.fail("a version number or alias after '@'")
            self.index += 1
            version = token.text
        self.expect("=", f"'=' after concept name {name.text!r}")
        return Leaf(name.text, self.value(), version, position=name.position)

    def value(self) -> Value:
        name = self.accept("name")
        if name is not None:
            return name.text
        if not self.accept("("):
            return self.number("a value")
        numbers = [self.number("a number")]
        while self.accept(","):
            if self.accept(")"):  # a trailing comma, as in Python's (0.5,)
                return tuple(numbers)
            numbers.append(self.number("a number after ','"))
        self.expect(")", "',' or ')' in the tuple")
        return tuple(numbers)

    def number(self, what: str) -> float:
        return self._finite(self.expect("number", what))

    def _finite(self, token: _Token) -> float:
        """A number token's value; one that overflows a float (1e400) is named as too large, not as a
        weight or value that is out of range."""
        number = float(token.text)
        if not math.isfinite(number):
            raise ExpressionError(f"number {token.text} is too large", self.text, token.position)
        return number

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def accept(self, kind: str) -> _Token | None:
        """Consume the next token if it is of ``kind``."""
        token = self.peek()
        if token is None or token.kind != kind:
            return None
        self.index += 1
        return token

    def expect(self, kind: str, what: str) -> _Token:
        token = self.accept(kind)
        if token is None:
            self.fail(what)
        return token

    def fail(self, what: str) -> NoReturn:
        """Raise for the next token (or the end of the text), which is not ``what`` was needed."""
        token = self.peek()
        if token is None:
            raise ExpressionError(f"unexpected end of expression, expected {what}", self.text, len(self.text))
        raise ExpressionError(f"expected {what}, got {token.text!r}", self.text, token.position)
