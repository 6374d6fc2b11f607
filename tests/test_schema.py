"""Condition schemas: encoding expression values and dataset labels, JSON round trips."""

from __future__ import annotations

import pytest

from conceptlib.errors import ConditionError
from conceptlib.schema import Categorical, Continuous, schema_from_json

COLOR = Categorical(("red", "green", "blue"))
POSITION = Continuous(("x", "y"), 0.0, 1.0, spatial=True)


def test_categorical_encodes_one_hot():
    assert COLOR.encode("green") == [0.0, 1.0, 0.0]
    assert COLOR.encode_label(2) == [0.0, 0.0, 1.0]


def test_categorical_rejects_unknown_names_listing_the_known_ones():
    with pytest.raises(ConditionError, match="color takes one of red, green, blue; got purple"):
        COLOR.encode("purple", concept="color")


def test_continuous_accepts_tuples_and_bare_numbers():
    assert POSITION.encode((0.25, 0.75)) == [0.25, 0.75]
    assert Continuous(("size",), 0.0, 0.5).encode(0.1) == [0.1]


@pytest.mark.parametrize(
    ("value", "message"),
    [((0.5,), "takes 2 numbers"), ((0.5, 1.5), "must lie in"), ("red", "got the name"), ((float("nan"), 0.5), "y|x")],
)
def test_continuous_rejects_wrong_arity_range_and_names(value, message):
    with pytest.raises(ConditionError, match=message):
        POSITION.encode(value, concept="position")


@pytest.mark.parametrize("schema", [COLOR, POSITION, Continuous(("size",), 0.0, 0.5)])
def test_schemas_round_trip_through_json(schema):
    assert schema_from_json(schema.to_json()) == schema


def test_an_unknown_schema_kind_is_refused():
    with pytest.raises(ConditionError, match="newer release"):
        schema_from_json({"kind": "graph"})
