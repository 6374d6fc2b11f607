"""The composition language: what parses to what, what is refused and where, and the round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conceptlib.errors import ExpressionError
from conceptlib.expr import (
    MAX_ALTERNATIVES,
    MAX_DEPTH,
    And,
    Leaf,
    Node,
    Not,
    Or,
    Weighted,
    alternatives,
    leaves,
    parse,
    to_text,
    validate,
)
from conceptlib.limits import MAX_WEIGHT

A, B, C = Leaf("a", 1.0), Leaf("b", 2.0), Leaf("c", 3.0)

NOT_PLACEMENT = "NOT must sit inside an AND with a positive term, e.g. 'shape=cube & !color=red'"
BAD_WEIGHT = "weight must be a positive number; use ! to negate"


def error_of(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    return info.value


# Leaves and values


def test_categorical_value_is_a_string() -> None:
    assert parse("color=red") == Leaf("color", "red")


def test_names_may_contain_digits_underscores_and_dashes() -> None:
    assert parse("_tint-2=dark-red_1") == Leaf("_tint-2", "dark-red_1")


def test_number_value_is_always_stored_as_float() -> None:
    value = parse("size=2").value
    assert value == 2.0
    assert isinstance(value, float)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("-0.5", -0.5),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("1e+2", 100.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-.5", -0.5),
        ("-3e-2", -0.03),
    ],
)
def test_numbers_may_be_negative_have_exponents_or_omit_a_side_of_the_point(text: str, number: float) -> None:
    assert parse(f"x={text}") == Leaf("x", number)


def test_tuple_value_is_a_tuple_of_floats() -> None:
    assert parse("pos=(0.2, -1, 3e-1)") == Leaf("pos", (0.2, -1.0, 0.3))


def test_parenthesised_single_number_is_a_one_tuple() -> None:
    assert parse("pos=(0.5)") == Leaf("pos", (0.5,))


def test_trailing_comma_is_accepted_as_in_python() -> None:
    assert parse("pos=(0.5,)") == Leaf("pos", (0.5,))
    assert parse("pos=(1,2,)") == Leaf("pos", (1.0, 2.0))


def test_version_number_is_kept_as_text() -> None:
    assert parse("color@3=red") == Leaf("color", "red", version="3")


def test_version_alias_is_kept_as_text() -> None:
    assert parse("color@stable=red") == Leaf("color", "red", version="stable")


# Operators and precedence


def test_and_chain_is_one_node() -> None:
    assert parse("a=1 & b=2 & c=3") == And((A, B, C))


def test_or_chain_is_one_node() -> None:
    assert parse("a=1 | b=2 | c=3") == Or((A, B, C))


def test_and_binds_tighter_than_or() -> None:
    assert parse("a=1 | b=2 & c=3") == Or((A, And((B, C))))
    assert parse("a=1 & b=2 | c=3") == Or((And((A, B)), C))


def test_parentheses_override_precedence() -> None:
    assert parse("(a=1 | b=2) & c=3") == And((Or((A, B)), C))


def test_parenthesised_chain_stays_a_separate_node() -> None:
    assert parse("(a=1 & b=2) & c=3") == And((And((A, B)), C))
    assert parse("a=1 | (b=2 | c=3)") == Or((A, Or((B, C))))


def test_redundant_parentheses_add_no_node() -> None:
    assert parse("((a=1))") == A


def test_not_binds_tighter_than_and() -> None:
    assert parse("a=1 & !b=2 & c=3") == And((A, Not(B), C))


def test_weight_binds_tighter_than_and() -> None:
    assert parse("0.5*a=1 & b=2") == And((Weighted(0.5, A), B))


def test_weight_applies_to_a_parenthesised_group() -> None:
    assert parse("2*(a=1 | b=2)") == Weighted(2.0, Or((A, B)))


def test_weight_and_not_stack_in_either_order() -> None:
    assert parse("a=1 & 0.5*!b=2") == And((A, Weighted(0.5, Not(B))))
    assert parse("a=1 & !0.5*b=2") == And((A, Not(Weighted(0.5, B))))


def test_not_of_a_composite_is_valid_inside_an_anchored_and() -> None:
    assert parse("a=1 & !(b=2 | c=3)") == And((A, Not(Or((B, C)))))


def test_whitespace_between_tokens_is_ignored() -> None:
    dense = "a@3=red&!b=(1,2)|0.5*c=3"
    spaced = " a @ 3 = red \t&\n! b = ( 1 , 2 ) | 0.5 * c = 3 "
    assert parse(spaced) == parse(dense)


# The tree


def test_positions_are_recorded_but_ignored_by_equality_and_hash() -> None:
    tree = parse("a=1 & 0.5*!b=2")
    built = And((A, Weighted(0.5, Not(B))))
    assert tree == built
    assert hash(tree) == hash(built)
    weighted = tree.terms[1]
    assert (tree.terms[0].position, weighted.position, weighted.term.position) == (0, 6, 10)


def test_and_and_or_refuse_fewer_than_two_terms() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        And((A,))
    with pytest.raises(ValueError, match="at least 2"):
        Or(())


def test_leaves_are_listed_in_source_order() -> None:
    tree = parse("(c=3 | a=1) & !b=2 & 0.5*a=1")
    assert leaves(tree) == [C, A, B, A]


# Printing


def test_to_text_puts_single_spaces_around_operators_and_prints_floats_with_repr() -> None:
    assert to_text(parse("a=1&b=red|c@v2=(1,0.5)")) == "a=1.0 & b=red | c@v2=(1.0,0.5)"


def test_to_text_parenthesises_a_chain_nested_in_the_same_operator() -> None:
    assert to_text(And((And((A, B)), C))) == "(a=1.0 & b=2.0) & c=3.0"
    assert to_text(Or((A, Or((B, C))))) == "a=1.0 | (b=2.0 | c=3.0)"


def test_to_text_parenthesises_or_inside_and_but_not_and_inside_or() -> None:
    assert to_text(And((Or((A, B)), C))) == "(a=1.0 | b=2.0) & c=3.0"
    assert to_text(Or((And((A, B)), C))) == "a=1.0 & b=2.0 | c=3.0"


def test_to_text_parenthesises_a_chain_under_not_or_weight() -> None:
    assert to_text(And((C, Not(Or((A, B)))))) == "c=3.0 & !(a=1.0 | b=2.0)"
    assert to_text(Weighted(0.25, And((A, B)))) == "0.25*(a=1.0 & b=2.0)"
    assert to_text(And((C, Weighted(1e-05, Not(A))))) == "c=3.0 & 1e-05*!a=1.0"


def test_one_tuple_prints_so_that_it_parses_back_as_a_tuple() -> None:
    assert parse(to_text(Leaf("pos", (0.5,)))) == Leaf("pos", (0.5,))


# Syntax errors: the message says what was wrong, the position is the offending token's column


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "empty expression; write a concept such as 'color=red'", 0),
        ("  \t ", "empty expression; write a concept such as 'color=red'", 0),
        ("color & shape=cube", "expected '=' after concept name 'color', got '&'", 6),
        ("color", "unexpected end of expression, expected '=' after concept name 'color'", 5),
        ("a=1)", "unexpected ')' with no matching '('", 3),
        ("a=", "unexpected end of expression, expected a value", 2),
        ("a=&b=1", "expected a value, got '&'", 2),
        ("a=1 $ b=2", "unknown character '$'", 4),
        ("a=1 & ", "unexpected end of expression, expected a concept such as 'color=red'", 6),
        ("a=1 | | b=2", "expected a concept such as 'color=red', got '|'", 6),
        ("()", "expected a concept such as 'color=red', got ')'", 1),
        ("(a=1 & b=2", "unexpected end of expression, expected ')' to close the '(' at column 1", 10),
        ("a=1 & (b=2 c=3)", "expected ')' to close the '(' at column 7, got 'c'", 11),
        ("a=1 b=2", "unexpected 'b'; join terms with '&' or '|'", 4),
        ("0.5 a=1", "expected '*' after weight '0.5', got 'a'", 4),
        ("a@=1", "expected a version number or alias after '@', got '='", 2),
        ("a@1.5=1", "expected a version number or alias after '@', got '1.5'", 2),
        ("a@", "unexpected end of expression, expected a version number or alias after '@'", 2),
        ("a=()", "expected a number, got ')'", 3),
        ("a=(1 2)", "expected ',' or ')' in the tuple, got '2'", 5),
        ("a=(1,,2)", "expected a number after ',', got ','", 5),
        ("a=(1", "unexpected end of expression, expected ',' or ')' in the tuple", 4),
        ("a=1e999", "number 1e999 is too large", 2),
        ("a=(1, -1e400)", "number -1e400 is too large", 6),
        ("a=- 1", "'-' must be part of a number such as -0.5 or .5", 2),
        ("a=1 & b=.", "'.' must be part of a number such as -0.5 or .5", 8),
    ],
)
def test_syntax_error_names_the_problem_at_its_column(text: str, message: str, position: int) -> None:
    err = error_of(text)
    assert err.reason == message
    assert err.position == position


def test_deep_nesting_is_refused_with_an_expression_error() -> None:
    assert error_of("(" * 500 + "a=1" + ")" * 500).position == MAX_DEPTH + 1
    assert error_of("a=1 & " + "!" * 500 + "b=2").position == 6 + MAX_DEPTH + 1


# Meaning errors: parse validates


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("!a=1", 0),
        ("!(a=1)", 0),
        ("!a=1 & !b=2", 0),
        ("0.5*!a=1 & !b=2", 4),
        ("a=1 | !b=2", 6),
        ("a=1 & !!b=2", 7),
        ("a=1 & 0.5*(b=2 | !c=3)", 17),
    ],
)
def test_not_outside_an_and_with_a_positive_term_is_refused_at_the_bang(text: str, position: int) -> None:
    err = error_of(text)
    assert err.reason == NOT_PLACEMENT
    assert err.position == position


def test_weighted_nots_do_not_count_as_positive_terms() -> None:
    assert error_of("0.5*!a=1 & 2*!b=2").reason == NOT_PLACEMENT


@pytest.mark.parametrize(("text", "position"), [("0*a=1", 0), ("-0.5*a=1", 0)])
def test_weight_that_is_not_positive_and_finite_is_refused_at_the_number(text: str, position: int) -> None:
    err = error_of(text)
    assert err.reason == BAD_WEIGHT
    assert err.position == position


def test_validate_accepts_a_valid_tree() -> None:
    validate(And((A, Weighted(0.5, Not(B)))))


@pytest.mark.parametrize(
    ("tree", "message"),
    [(Not(A), NOT_PLACEMENT), (Weighted(-1.0, A), BAD_WEIGHT), (Weighted(math.nan, A), BAD_WEIGHT)],
)
def test_validate_without_text_points_at_column_zero(tree: Node, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        validate(tree)
    assert (info.value.reason, info.value.position) == (message, 0)


def test_error_draws_a_caret_under_the_offending_token() -> None:
    err = error_of("color & shape=cube")
    assert err.caret() == "  color & shape=cube\n        ^"
    assert str(err).startswith("column 7: ")


def test_messages_name_each_column_once_and_an_empty_expression_none() -> None:
    assert str(error_of("(a=1 & b=2")) == (
        "column 11: unexpected end of expression, expected ')' to close the '(' at column 1")
    assert str(error_of("")) == "empty expression; write a concept such as 'color=red'"


def test_a_weight_too_large_for_a_float_is_named_as_too_large_not_as_not_positive() -> None:
    err = error_of("a=1 & 1e400*b=2")
    assert (err.reason, err.position) == ("number 1e400 is too large", 6)


# Properties

NAMES = st.sampled_from(["color", "shape", "size", "pos", "e", "_"]) | st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_-]{0,10}", fullmatch=True
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
VALUES = st.one_of(NAMES, FINITE, st.lists(FINITE, min_size=1, max_size=4).map(tuple))
VERSIONS = st.none() | st.from_regex(r"[0-9]{1,3}", fullmatch=True) | NAMES
WEIGHTS = st.floats(min_value=0.0, exclude_min=True, max_value=MAX_WEIGHT)
LEAVES = st.builds(Leaf, NAMES, VALUES, VERSIONS)


@st.composite
def anchored_ands(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> And:
    """An AND with at least one positive term: the only place a NOT (maybe weighted) may sit."""
    negated = st.builds(Not, children)
    negated = negated | st.builds(Weighted, WEIGHTS, negated)
    positives = draw(st.lists(children, min_size=1, max_size=4))
    negatives = draw(st.lists(negated, min_size=max(0, 2 - len(positives)), max_size=4 - len(positives)))
    return And(tuple(draw(st.permutations(positives + negatives))))


def compose(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Weighted, WEIGHTS, children),
        st.lists(children, min_size=2, max_size=4).map(lambda terms: Or(tuple(terms))),
        anchored_ands(children),
    )


VALID_TREES = st.recursive(LEAVES, compose, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(VALID_TREES)
def test_every_valid_tree_survives_printing_and_parsing(tree: Node) -> None:
    assert parse(to_text(tree)) == tree


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab=()&|!*@.,0123456789- e"))
def test_any_text_parses_to_a_round_tripping_tree_or_raises_expression_error(text: str) -> None:
    try:
        tree = parse(text)
    except ExpressionError as err:
        assert 0 <= err.position <= len(text)
    else:
        assert parse(to_text(tree)) == tree


# ---------------------------------------------------------------- OR as a mixture of alternatives
def test_an_or_is_a_mixture_whose_term_weights_are_its_shares():
    a, b, c = A, B, C
    assert alternatives(parse("a=1 | b=2")) == [(1.0, a), (1.0, b)]
    assert alternatives(parse("0.3*a=1 | 0.7*b=2")) == [(0.3, a), (0.7, b)]
    assert alternatives(parse("(0.3*a=1 | b=2) & c=3")) == [(0.3, And((a, c))), (1.0, And((b, c)))]
    assert alternatives(parse("0.5*(a=1 | b=2) | c=3")) == [(0.5, a), (0.5, b), (1.0, c)]


def test_ors_without_a_mixture_reading_stay_as_written():
    for text in ("c=3 & !(a=1 | b=2)", "2*(a=1 | b=2) & c=3", "a=1 & 2*b=2", "a=1"):
        node = parse(text)
        assert alternatives(node) == [(1.0, node)], text


def test_an_expression_expanding_into_too_many_alternatives_is_refused_when_parsed():
    parse(" & ".join(["(a=1 | b=2)"] * 8))  # 256 alternatives: the most allowed
    with pytest.raises(ExpressionError, match=f"more than {MAX_ALTERNATIVES} alternatives"):
        parse(" & ".join(["(a=1 | b=2)"] * 9))
