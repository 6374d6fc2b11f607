"""Helpers of the hostile-input suite: reading and editing registry files by hand (as the bad-input tests
do), checking a forked command's answer."""

from __future__ import annotations

from tests.test_bad_input import dump, execute

__all__ = ["dump", "execute", "one_line_error"]


def one_line_error(code: int, output: str, *fragments: str) -> None:
    """:func:`tests.conftest.assert_one_line_error` for a forked command's exit code and output."""
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], output
