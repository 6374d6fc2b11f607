"""A fixed set of seeded runs whose every output byte is pinned: what a refactor must leave unchanged.

The scenario drives only the ``concept`` CLI, whose options are the stable interface, so the same code
runs before and after a change of the library inside it. It trains tiny concepts of every kind (a denoiser
prior with classifiers and with residual concepts, a dsm energy lineage, contrastive-divergence lineages
with the ``small`` and the paper's nets), composes a fixed set of expressions (AND, NOT, OR, weights, a
drawn prior condition, several samplers and guidance settings), infers, shows energies and runs two
evaluation protocols. It records the sha256 of every PNG and of every JSON record with its timing fields
removed: the sidecars' provenance, each version as ``show --json`` prints it, inference and evaluation
results.

``tests/goldens.json`` was written by ``python -m tests.goldens`` (from the repository root) on the main
branch as it stood before the composition core was reorganised (issue 24): the scenario without residual
concepts on commit 06daabe, then whole on d403987 (which added them; every earlier digest came out the
same), then on 47ca2e1 (residual concepts redesigned: their versions, samples and the eval record's
``residual_guidance`` changed, nothing else; residual inference and ``--residual-guidance`` added to the
scenario; main at b8c8e9d, after the hostile-input work, gave every digest the same), then on d286725 (CLI
usability: versions record their ``loss_curve`` and eval grids are captioned; nothing else changed), then on
b433d09 (residual chains take Langevin correctors only at noise >= 0.05: residual samples and their sidecars
changed, nothing else), then with scalar conditions as Fourier features (U-Net config
``condition_frequencies``: ``show`` and the sidecars, which record the architecture config, changed; no
image, energy or inference number did, the scenario having no scalar-conditioned U-Net), then with OR sampled
as a mixture of alternatives, a NOT of a residual's value or of the prior's own concept sampled exactly and a
chain's unnamed residuals drawn per sample (the samples and sidecars of the five compositions with an OR or
such a NOT changed, and the eval grid of ``position | position``; a classifier's NOT and every other digest did
not; two compositions were added: a tempered weighted OR and a NOT of the root beside a residual), then with
the two-sample realism test in every eval row and the protocols drawing their categorical values before their
positions (the eval's ``results.json`` and the ``position & !color`` grid changed, the real renders' grids were
added; every other digest stayed), then with residual chains sampling at eta 0.5 by default, every sidecar
recording the network evaluations it spent, the eval rows recording theirs and the two-sample critic seeing
the high-pass residual (the samples of the compositions over residual concepts, every sidecar and the eval's
``results.json`` changed; the scenario names ``--levels``, so only eta moved; no other image did), then with
each eval row's two-sample accuracy the mean of three critics (only the eval's ``results.json`` changed), then
with the Langevin step's default at 10 instead of 100 (the cd concepts trained and sampled with it: their
``show`` and ``infer`` records and the samples and sidecars of their compositions changed, and the eval's
``results.json``, which now records the Langevin settings; no denoiser, residual or dsm digest moved), then
on an AMD machine with the library unchanged since (every JSON record differed in its last float bits from
the goldens made on the previous machine, every PNG was identical), so the platform now records the CPU's
vendor too.
``tests/test_goldens.py`` checks it. Floating-point kernels differ between CPU instruction sets, so the file
records the torch version and CPU capability it was made with; elsewhere the check is skipped and says
why. Regenerate it only on purpose: after a change meant to alter what users get (a new default, a fix),
and say so in that commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner, Result

from conceptlib.cli import cli

GOLDENS = Path(__file__).resolve().parent / "goldens.json"
TIMING = {"seconds", "iterations_per_second", "created_at"}
"""Fields that measure the run rather than its result: left out of every hash."""

SOURCE = ["--source", "scenes", "--param", "n=256", "--param", "image_size=16"]
TINY = ["--arch-config", "channels=[8,8,8]", "--arch-config", "embed=16", "--iterations", "3",
        "--batch-size", "8", "--steps", "2", "--device", "cpu"]
CONCEPTS: list[tuple[str, ...]] = [  # objectives named, so that a new default for --objective auto changes nothing
    ("position", "--objective", "denoiser"),  # the prior
    ("color", "--objective", "classifier", "--with", "position"),
    ("shape", "--objective", "classifier", "--with", "position"),
    ("dpos", "--attribute", "position", "--objective", "dsm"),  # a dsm energy lineage
    ("dcol", "--attribute", "color", "--objective", "dsm", "--with", "dpos"),
    ("dshape", "--attribute", "shape", "--objective", "classifier", "--with", "dpos"),
    ("cpos", "--attribute", "position", "--objective", "cd"),  # contrastive divergence, small net
    ("ccol", "--attribute", "color", "--objective", "cd", "--with", "cpos"),
    ("ppos", "--attribute", "position", "--objective", "cd", "--arch", "paper64",
     "--arch-config", "extra_blocks=1"),  # the paper's net
    ("rshape", "--attribute", "shape", "--objective", "residual", "--with", "position"),  # residuals on position
    ("rcolor", "--attribute", "color", "--objective", "residual", "--with", "rshape"),
]
SAMPLING = ["-n", "3", "--seed", "3", "--levels", "4", "--device", "cpu"]
COMPOSITIONS: list[tuple[str, ...]] = [
    ("position=(0.3,0.7)",),
    ("color=red",),  # the prior's condition drawn per sample
    ("position=(0.3,0.7) & shape=circle & color=red",),
    ("position=(0.3,0.7) & !color=red",),
    ("!position=(0.3,0.7) & color=blue",),
    ("position=(0.2,0.2) | position=(0.8,0.8)",),  # OR at the top: each sample's alternative drawn
    ("(color=red | color=green) & position=(0.5,0.5)",),  # nested OR: AND distributed over it
    ("0.3*position=(0.2,0.2) | 0.7*position=(0.8,0.8)", "--temperature", "2"),  # shares, tempered
    ("2*color=red & 0.5*!shape=square & position=(0.4,0.6)",),
    ("color=red & !(shape=square & color=blue) & position=(0.5,0.5)",),
    ("shape=triangle & color=green", "--classifier-temperature", "1", "--classifier-boost-max", "1",
     "--guidance", "1", "--classifier-guidance", "1"),
    ("color=red", "--prior-guidance", "2", "--corrector", "none", "--eta", "0"),
    ("position=(0.3,0.7) & color=red", "--batch-size", "2", "--temperature", "0.5"),
    ("dpos=(0.3,0.7) & dcol=red",),
    ("dcol=red & dshape=circle",),  # dsm prior drawn, a classifier leaf reweighed
    ("dpos=(0.3,0.7) & !dcol=red | dpos=(0.7,0.3)", "--corrector", "mala"),
    ("dpos=(0.3,0.7) & dcol=red", "--guidance", "1", "--classifier-guidance", "1"),
    ("cpos=(0.3,0.7) & ccol=red",),
    ("cpos=(0.3,0.7) & !ccol=red", "--init", "gray"),
    ("cpos=(0.2,0.2) | 2*cpos=(0.8,0.8)", "--temperature", "2"),
    ("ppos=(0.5,0.5)",),
    ("position=(0.4,0.6) & rshape=circle & rcolor=green",),
    ("rshape=circle",),
    ("rcolor=red & !rshape=square",),  # NOT of a residual: the shapes it leaves
    ("!position=(0.3,0.7) & rcolor=red",),  # NOT of the root: its condition drawn away
    ("rshape=circle | rshape=triangle",),
    ("2*rcolor=blue & rshape=circle & position=(0.5,0.5)", "--guidance", "1"),
    ("rshape=triangle", "--residual-guidance", "2", "--prior-guidance", "2"),  # the root drawn, guided
]
INFERENCES = ["position", "color", "dpos", "dcol", "cpos", "ccol", "rshape", "rcolor"]


def scenario(work: Path) -> dict[str, str]:
    """Run everything under ``work`` (an empty directory); returns ``{what: sha256}`` in a fixed order."""
    torch.set_num_threads(1)  # as the test suite runs (tests/conftest.py)
    runner = CliRunner()
    registry = work / "registry.db"

    def run(*args: str) -> Result:
        result = runner.invoke(cli, ["--registry", str(registry), *args], catch_exceptions=False)
        if result.exit_code != 0:
            raise AssertionError(f"concept {' '.join(args)} failed: {result.output}")
        return result

    digests: dict[str, str] = {}
    for name, *extra in CONCEPTS:
        run("add", name, *SOURCE, *TINY, *extra)
        digests[f"show {name}"] = _json_digest(json.loads(run("show", name, "--json").stdout))
    digests["show color --energies"] = _json_digest(
        json.loads(run("show", "color", "--energies", "-n", "16", "--device", "cpu", "--json").stdout))
    for index, (expression, *options) in enumerate(COMPOSITIONS):
        out = work / f"compose{index}"
        out.mkdir()  # the grid goes inside: a grid's directory must exist before sampling
        run("compose", expression, *SAMPLING, *options, "--out-dir", str(out), "-o", str(out / "grid.png"))
        digests.update(_directory_digests(f"compose {expression} {' '.join(options)}".strip(), out))
    image = work / "compose2" / "sample_00000.png"
    for name in INFERENCES:
        found = json.loads(run("infer", name, str(image), "--grid", "3", "--refine-steps", "2", "--device", "cpu",
                               "--json").stdout)  # progress goes to stderr
        digests[f"infer {name}"] = _json_digest(found)
    evaluation = work / "eval"
    run("eval", "--protocol", "position & !color", "--protocol", "position | position", "-n", "4",
        "--inference", "2", "--levels", "3", "--out-dir", str(evaluation), "--judge-cache", str(work / "judges"),
        "--device", "cpu")
    digests.update(_directory_digests("eval", evaluation, skip=frozenset({"results.md"})))  # results.md shows seconds
    return digests


def _directory_digests(label: str, directory: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    found = {}
    for path in sorted(directory.iterdir()):
        if path.name in skip:
            continue
        if path.suffix == ".json":
            found[f"{label}: {path.name}"] = _json_digest(json.loads(path.read_text()))
        else:
            found[f"{label}: {path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _json_digest(document: Any) -> str:
    """sha256 of ``document`` without its timing fields, keys in their written order."""
    return hashlib.sha256(json.dumps(_without_timing(document)).encode()).hexdigest()


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def platform() -> dict[str, str]:
    """What the bits depend on beyond the code: the torch build, the CPU kernels it picks and the CPU's vendor
    (an AMD machine at the same torch and AVX512 capability gave other last float bits than the machine the
    goldens were made on before; the vendor is the likeliest difference, so it is recorded)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_vendor": cpu_vendor()}


def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (GenuineIntel, AuthenticAMD), or the machine's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as host

    return host.processor() or host.machine()


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        digests = scenario(Path(directory))
    GOLDENS.write_text(json.dumps({"platform": platform(), "digests": digests}, indent=1) + "\n")
    print(f"wrote {len(digests)} digests to {GOLDENS}", file=sys.stderr)


if __name__ == "__main__":
    main()
