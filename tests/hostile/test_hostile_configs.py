"""Architecture configs from someone else's file (issue 25, case 3): the first-party networks' own defaults pass
their bounds, values outside them are refused in one line naming the key, and a plugin's check that fails in
any way is one line too."""

from __future__ import annotations

from typing import Any

import pytest

from conceptlib.architectures import Architecture
from conceptlib.errors import ConceptError
from conceptlib_nets import RESIDUAL_CONFIG, build_residual, conceptlib_architectures


@pytest.mark.parametrize("architecture", conceptlib_architectures(), ids=lambda a: a.name)
def test_every_first_party_architecture_takes_its_own_defaults(architecture):
    assert architecture.config() == dict(architecture.default_config)


def test_the_residual_architecture_takes_its_template_reading_config():
    residual = next(a for a in conceptlib_architectures() if a.name == "residual")
    assert residual.config({"context": 6, "residual": True}) == RESIDUAL_CONFIG
    assert RESIDUAL_CONFIG["context"] == 6 and RESIDUAL_CONFIG["residual"] is True


@pytest.mark.parametrize(
    ("override", "key"),
    [({"context": -1}, "context"), ({"context": 65}, "context"), ({"context": "6"}, "context"),
     ({"context": 6.5}, "context"), ({"context": True}, "context"), ({"residual": "yes"}, "residual"),
     ({"channels": [48, 64, 10**6]}, "channels"), ({"patch": 0}, "patch")],
    ids=str,
)
def test_a_residual_config_out_of_bounds_is_refused_in_one_line(override, key):
    residual = next(a for a in conceptlib_architectures() if a.name == "residual")
    with pytest.raises(ConceptError, match=f"'residual' does not take this config: {key}") as caught:
        residual.config(override)
    assert "\n" not in str(caught.value)


def raising(error: BaseException):
    def check(config: Any) -> None:
        raise error
    return check


@pytest.mark.parametrize(
    ("error", "shown"),
    [(KeyError(), "KeyError"), (RuntimeError("first\nsecond"), "first"), (RecursionError("too deep"), "too deep")],
    ids=["empty KeyError", "two lines", "RecursionError"],
)
def test_a_plugin_check_that_fails_in_any_way_is_one_line(error, shown):
    architecture = Architecture("plugged", build_residual, {"any": 0}, check_config=raising(error))
    with pytest.raises(ConceptError) as caught:
        architecture.config({"any": 1})
    assert str(caught.value) == f"architecture 'plugged' does not take this config: {shown}"
