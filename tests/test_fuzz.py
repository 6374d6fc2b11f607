"""Bad input, fuzzed: the expression parser and the CLI's arguments never answer with a traceback.

Every case either succeeds or fails with exit code 2 and one ``error:`` line (an expression error adds
its caret). Seeded (``derandomize``), so a run is reproducible; the case counts are asserted, not assumed.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conceptlib import evaluation, inference, jobs
from conceptlib.cli import cli
from conceptlib.errors import ExpressionError
from conceptlib.expr import parse, to_text
from conceptlib_scenes.source import ScenesSource
from tests.reliability import TINY_CD

PARSER_CASES = 10_000
CLI_CASES = 1_000

GRAMMAR = "ab_=@()&|!*.,0123456789e- \t"
WORDS = ["shape=circle", "color@2=red", "position@stable=(0.3,0.7)", "size=1e309", "x=nan", "&", "|", "!", "(",
         ")", "0.5*", "-1*", "0*", " ", "=", "@", ","]
EXPRESSIONS = st.one_of(
    st.text(max_size=40),  # any unicode
    st.text(alphabet=GRAMMAR, max_size=40),  # the grammar's characters in any order
    st.lists(st.sampled_from(WORDS), max_size=12).map("".join),  # the grammar's words in any order
)


def test_the_expression_parser_answers_every_text_with_a_tree_or_a_pointed_error():
    cases = 0

    @settings(max_examples=PARSER_CASES, deadline=None, derandomize=True, database=None)
    @given(EXPRESSIONS)
    def case(text: str) -> None:
        nonlocal cases
        cases += 1
        try:
            tree = parse(text)
        except ExpressionError as err:
            assert "\n" not in str(err)
            assert 0 <= err.position <= len(text)
            assert len(err.caret().splitlines()) == 2
        else:
            assert parse(to_text(tree)) == tree

    case()
    print(f"\nexpression parser: {cases} cases fuzzed, 0 failures")
    assert cases >= PARSER_CASES


COMMANDS = ["add", "compose", "list", "show", "history", "rollback", "alias", "infer", "eval", "sources", "export",
            "import", "source"]
OPTIONS = [
    "--json", "-n", "-o", "--output", "--out-dir", "--seed", "--steps", "--step-size", "--noise", "--levels",
    "--guidance", "--corrector", "--device", "--iterations", "--batch-size", "--lr", "--l2", "--param",
    "--arch", "--arch-config", "--with", "--objective", "--to", "--delete", "--protocol", "--grid", "--each",
    "--resume", "--checkpoint-every", "--checkpoint-dir", "--temperature", "--init", "--source", "--attribute",
    "--registry", "--plugins-dir", "--help", "--version", "--inference", "--refine-steps", "sample",
]
VALUES = [
    "shape", "shape@1", "shape@2", "shape@stable", "shape@", "@1", "color=red", "shape=circle",
    "shape=circle & !shape=square", "!shape=circle", "position=(0.3,0.7)", "shape=(1,2", "0", "1", "-1", "2",
    "3.5", "1e309", "nan", "inf", "-inf", "cuda", "cuda:9", "cpu", "auto", "mps", "n=-5", "image_size=big",
    "n=3", "channels=[8]", "x=", "=", "scenes", "nowhere", "dsm", "cd", "classifier", "ula", "gray", "out.png",
    "out", "registry.db", "file.cpt", "", " ", "☃", "stable", "postgresql://u:pw@h:port/db", "nosuch://u:pw@h/db",
    "sqlite://", "sqlite:///x.db", "://",
]
WORDS = st.one_of(
    st.sampled_from(VALUES),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\\~\x00"), max_size=10),
)
PIECES = st.one_of(  # an option with a value, a lone word, or any of the CLI's words out of place
    st.tuples(st.sampled_from(OPTIONS), WORDS), st.tuples(WORDS), st.tuples(st.sampled_from(COMMANDS + OPTIONS)),
)
ARGV = st.tuples(st.sampled_from(COMMANDS), st.lists(PIECES, max_size=6)).map(
    lambda drawn: [drawn[0], *(word for piece in drawn[1] for word in piece)]
)


class Reached(Exception):
    """The arguments were accepted and the job would start: the job itself is not what is fuzzed here."""


def reached(*args: object, **kwargs: object) -> None:
    raise Reached


@pytest.fixture
def fuzz_registry(tmp_path, monkeypatch) -> str:
    """A registry with shape@1; the working directory is a scratch one for the files commands write."""
    path = str(tmp_path / "registry.db")
    result = CliRunner().invoke(cli, ["--registry", path, "add", "shape", *TINY_CD])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    for module, name in [(jobs, "add_concept"), (jobs, "compose_images"), (evaluation, "evaluate_registry"),
                         (inference, "infer"), (inference, "infer_each"), (ScenesSource, "load")]:
        monkeypatch.setattr(module, name, reached)
    return path


def assert_clean(result: Result) -> None:
    if isinstance(result.exception, Reached):
        return
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        lines = result.output.splitlines()
        assert len([line for line in lines if line.startswith("error:")]) == 1, result.output
        assert all(line.startswith(("error:", "  ")) for line in lines), result.output  # the error, and a caret


def test_cli_arguments_are_answered_with_a_result_or_one_error_line(fuzz_registry):
    cases = 0
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=CLI_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ARGV)
    def case(argv: list[str]) -> None:
        nonlocal cases
        cases += 1
        result = CliRunner().invoke(cli, ["--registry", fuzz_registry, *argv])
        assert_clean(result)
        outcomes["refused" if result.exit_code == 2 else "accepted"] += 1

    case()
    print(f"\nCLI arguments: {cases} cases fuzzed ({outcomes}), 0 failures")
    assert cases >= CLI_CASES
