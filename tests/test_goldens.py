"""Seeded samples, sidecars, versions, inference and evaluation stay the same bytes (see tests/goldens.py).

The golden digests were produced by ``python -m tests.goldens`` on main before the composition core was
reorganised (issue 24); any change to a number a user can see fails here, naming what changed.
"""

from __future__ import annotations

import json

import pytest

from tests.goldens import GOLDENS, platform, scenario


def test_every_output_of_the_fixed_scenario_is_byte_identical_to_the_goldens(tmp_path):
    recorded = json.loads(GOLDENS.read_text())
    if recorded["platform"] != platform():
        pytest.skip(f"goldens were made with {recorded['platform']}, this is {platform()}: float kernels differ")
    found = scenario(tmp_path)
    changed = [what for what, digest in recorded["digests"].items() if found.get(what) != digest]
    assert not changed, f"{len(changed)} of {len(recorded['digests'])} outputs changed, first: {changed[:5]}"
    assert found.keys() == recorded["digests"].keys()
