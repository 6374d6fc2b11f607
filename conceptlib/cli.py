"""The ``concept`` command: a thin click + rich shell over the library.

Every command parses, calls one library function and prints. Errors the user can cause become one
line on stderr and exit code 2 (Ctrl-C: 130), never a traceback. torch is imported only by the
commands that train or sample, so ``concept list`` and ``concept --help`` start fast.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from conceptlib.console import distinct_names, print_listing, print_warning, records, value_text
from conceptlib.errors import ConceptError, ExpressionError, Interrupted, is_out_of_memory
from conceptlib.expr import GRAMMAR
from conceptlib.limits import MAX_BATCH_SIZE, MAX_SEED
from conceptlib.redaction import redact_text
from conceptlib.settings import (
    ETA,
    LEVELS,
    OBJECTIVES,
    RESIDUAL_CORRECTOR_ABOVE,
    RESIDUAL_ETA,
    RESIDUAL_LEVELS,
    TRAIN_CONFIGS,
    CdConfig,
    DsmConfig,
    SamplerSettings,
    TrainConfig,
)
from conceptlib.terminal import SafeConsole, printable

out = SafeConsole(soft_wrap=True)
"""Markup off and control characters escaped: names and paths from users print as they are."""
err = SafeConsole(stderr=True, soft_wrap=True)
quiet = Console(quiet=True)
"""Progress of ranks other than 0 under torchrun: one set of bars per run is enough."""


def error_line(message: str) -> None:
    """Print ``error: MESSAGE`` on one line, whatever the message holds (a driver's several lines, a newline
    in an argument): line breaks become spaces and other unprintable characters their escapes; any URL's
    password is hidden."""
    joined = " ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"error: {printable(redact_text(joined))}")


def fail(exc: ConceptError) -> NoReturn:
    error_line(str(exc))
    if isinstance(exc, ExpressionError):
        for line in exc.caret().splitlines():
            err.print(line)
    sys.exit(exc.exit_code)


OVERVIEW = """\
Train, version, compose and infer energy-based concepts.

  concept list                      the registered concepts
  concept compose "position=(0.3,0.7) & color=red" -o grid.png
  concept infer color scene.png     which color best explains an image
  concept add NAME --source scenes  train a concept (--with OTHER freezes one)
  concept sources                   dataset sources and architectures
"""


class ConceptGroup(click.Group):
    """Turns usage errors, ``ConceptError`` and Ctrl-C into one line and an exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            error_line(f"{exc.format_message()}{hint}")
            sys.exit(2)
        except ConceptError as exc:
            fail(exc)
        except (click.Abort, KeyboardInterrupt):
            fail(Interrupted("interrupted: nothing was written"))
        except click.ClickException as exc:
            error_line(exc.format_message())
            sys.exit(exc.exit_code)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            error_line(f"out of memory ({str(exc).splitlines()[0][:200]}); lower -n or --batch-size")
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities, which pass its comparisons (``nan <= 0`` is
    false) and would reach the sampler or the optimiser as a NaN image or a diverged run."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def overview(ctx: click.Context) -> str:
    """What bare ``concept`` prints: a few first commands and the list of all, not a usage error."""
    width = min(out.width, 80)
    group = ctx.command
    assert isinstance(group, click.Group)
    commands = textwrap.fill(f"Commands: {', '.join(group.list_commands(ctx))}", width, subsequent_indent="  ")
    hint = textwrap.fill(f"'{ctx.command_path} COMMAND --help' explains a command, '{ctx.command_path} --help' "
                         "lists every option.", width)
    return f"{OVERVIEW}\n{commands}\n{hint}"


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``key=value`` options; values that read as JSON (numbers, lists) are decoded."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{option} takes KEY=VALUE; got {pair!r}")
        try:
            result[key] = json.loads(value)
        except (ValueError, RecursionError):
            result[key] = value
    return result


def open_registry(ctx: click.Context, create: bool = False):
    """The command's registry, closed when the command ends: a process that runs many commands (a test
    runner, a notebook) would otherwise keep every command's pooled connections until garbage collection,
    and a PostgreSQL server refuses clients past ``max_connections``."""
    from conceptlib.registry import Registry

    registry = Registry.open(ctx.obj["registry"], create=create, deferred=create)  # created by its first write
    ctx.call_on_close(registry.close)
    return registry


def plugin_manager(ctx: click.Context):
    from conceptlib.plugins import PluginManager

    return PluginManager(ctx.obj["plugins_dir"])


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=ConceptGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", envvar="CONCEPTLIB_REGISTRY", metavar="URL",
              help="Registry file or SQLAlchemy URL [default: ./registry.db; env CONCEPTLIB_REGISTRY].")
@click.option("--plugins-dir", envvar="CONCEPTLIB_PLUGINS_DIR", metavar="DIR",
              type=click.Path(file_okay=False), help="Also load single-file plugins from DIR.")
@click.version_option(package_name="conceptlib")
@click.pass_context
def cli(ctx: click.Context, registry: str | None, plugins_dir: str | None) -> None:
    """Train, version, compose and infer energy-based concepts."""
    ctx.obj = {"registry": registry, "plugins_dir": plugins_dir}
    if ctx.invoked_subcommand is None:
        click.echo(overview(ctx))


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (a GPU when there is one), cpu or cuda[:N].")


def seed_option(what: str) -> Any:
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
                        help=f"Seed of {what}.")


def batch_option(what: str) -> Any:
    return click.option("--batch-size", default=SamplerSettings.batch_size, show_default=True,
                        type=click.IntRange(1, MAX_BATCH_SIZE),
                        help=f"{what} per network call: more is faster until memory runs out.")


# ------------------------------------------------------------------- add
CD, DSM, TRAIN = CdConfig(), DsmConfig(), {name: config() for name, config in TRAIN_CONFIGS.items()}
"""The training defaults the options show: each objective's config (see conceptlib.settings)."""


def per_objective(field: str) -> str:
    return "[default: " + ", ".join(f"{getattr(config, field)} {name}" for name, config in TRAIN.items()) + "]"


@cli.command()
@click.argument("name")
@click.option("--source", "source_name", required=True, help="Dataset source (see 'concept sources').")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Source parameter, repeatable.")
@click.option("--attribute", help="Source attribute to learn [default: NAME].")
@click.option("--with", "frozen", multiple=True, metavar="OTHER[@V]",
              help="Registered concept to freeze and compose into the sampler, repeatable.")
@click.option("--objective", default="auto", show_default=True, type=click.Choice(["auto", *OBJECTIVES]),
              help="denoiser: a denoiser of whole scenes, composed by its score (the first concept); "
                   "residual: a correction to the --with concepts' composed denoiser, trained with them in its "
                   "loss, so it learns what they do not explain on this data (also what they never drew); "
                   "classifier: -log p(c | noisy x), guidance that steers the --with concepts but never reads "
                   "them in training and draws nothing they cannot; "
                   "dsm: denoising score matching of a noise-conditioned energy (a whole scene model); "
                   "cd: the paper's contrastive divergence, the --with concepts in its Langevin negatives; "
                   "auto: denoiser alone, residual with --with.")
@click.option("--arch", "architecture",
              help="Energy-network architecture [default: unet for denoiser and dsm, residual, classifier, small "
                   "for cd].")
@click.option("--arch-config", multiple=True, metavar="KEY=VALUE", help="Architecture setting, repeatable.")
@click.option("--iterations", type=click.IntRange(1), help=per_objective("iterations"))
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), help=per_objective("batch_size"))
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=FiniteRange(0, min_open=True),
              help="Adam learning rate.")
@click.option("--condition-dropout", default=DSM.condition_dropout, show_default=True,
              type=FiniteRange(0, 1, max_open=True),
              help="denoiser, residual, dsm: fraction of samples trained with the null condition.")
@click.option("--l2", default=CD.l2, show_default=True, type=FiniteRange(0),
              help="cd: energy regulariser (eq. 2).")
@click.option("--steps", default=CD.langevin.steps, show_default=True, type=click.IntRange(1),
              help="cd: Langevin steps per update.")
@click.option("--step-size", default=CD.langevin.step_size, show_default=True, type=FiniteRange(0, min_open=True),
              help="cd: Langevin step size.")
@click.option("--noise", default=CD.langevin.noise, show_default=True, type=FiniteRange(0),
              help="cd: Langevin noise.")
@seed_option("the initial weights and the batches drawn")
@device_option
@click.option("--description", default="", help="What this concept means (stored on first add).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), metavar="A",
              help="Register nothing if held-out accuracy is below A (categorical classifier concepts); "
                   "without it, below 0.9 only warns.")
@click.option("--resume", is_flag=True,
              help="Continue the checkpoint of a stopped run with the same settings "
                   "(--iterations and --lr may differ).")
@click.option("--checkpoint-every", default=100, show_default=True, type=click.IntRange(1), metavar="N",
              help="Save a resumable checkpoint every N iterations (and on Ctrl-C).")
@click.option("--checkpoint-dir", envvar="CONCEPTLIB_CHECKPOINTS", type=click.Path(file_okay=False, path_type=Path),
              help="Where checkpoints go [default: beside a registry file (REGISTRY.checkpoints/), "
                   "else ~/.cache/conceptlib/checkpoints; env CONCEPTLIB_CHECKPOINTS].")
@click.pass_context
def add(ctx: click.Context, name: str, source_name: str, params: tuple[str, ...], attribute: str | None,
        frozen: tuple[str, ...], objective: str, architecture: str | None, arch_config: tuple[str, ...],
        iterations: int | None, batch_size: int | None, lr: float, condition_dropout: float, l2: float,
        steps: int, step_size: float, noise: float, seed: int, device: str, description: str,
        min_accuracy: float | None, resume: bool, checkpoint_every: int, checkpoint_dir: Path | None) -> None:
    """Train concept NAME and register it as a new version.

    Every --with concept is frozen (with the concepts it was trained with) and only the new network learns
    (continual learning). By default (objective residual) the frozen concepts, each at the image's own
    label, are composed inside the new concept's loss, so it learns exactly what they do not explain on
    this data. See --objective for what --with does under the others. A run that stops (Ctrl-C,
    divergence, a failing source) registers nothing and leaves a checkpoint; --resume continues it.
    The loss curve is drawn to a PNG beside the checkpoints ('concept show NAME --plot' redraws it).
    """
    from conceptlib import distributed
    from conceptlib.cautions import accuracy_warning
    from conceptlib.checkpoints import checkpoint_root
    from conceptlib.devices import resolve_device
    from conceptlib.jobs import AddRequest, add_concept
    from conceptlib.progress import job_progress
    from conceptlib.settings import LangevinConfig, resolve_objective, train_config

    torch_device = ctx.with_resource(distributed.session(resolve_device(device)))
    ranks = distributed.current()
    train: TrainConfig = train_config(resolve_objective(objective, bool(frozen)), {
        "iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed,
        "condition_dropout": condition_dropout, "l2": l2,
        "langevin": LangevinConfig(steps=steps, step_size=step_size, noise=noise)})
    request = AddRequest(
        name=name, source=source_name, params=parse_pairs(params, "--param"), attribute=attribute,
        frozen=frozen, architecture=architecture, architecture_config=parse_pairs(arch_config, "--arch-config"),
        train=train,
        device=torch_device, description=description, resume=resume,
        checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, min_accuracy=min_accuracy,
    )
    registry = distributed.main_first(lambda: open_registry(ctx, create=True))
    plugins = plugin_manager(ctx)
    with job_progress(err if ranks.is_main else quiet) as progress:
        version = add_concept(registry, plugins, request,
                              on_load=progress.phase("loading dataset"),
                              on_iteration=progress.training(train.iterations))
    if not ranks.is_main:
        return
    from conceptlib.plots import write_concept_figure

    m = version.metrics
    gap = f"  energy gap {m['energy_gap']:.4f}" if "energy_gap" in m else ""
    accuracy = f"  held-out accuracy {m['held_out_accuracy']:.2f}" if "held_out_accuracy" in m else ""
    out.print(f"registered {version.ref}  loss {m['loss']:.4f}{gap}{accuracy}  {m['seconds']:.1f} s  "
              f"in {registry.display_url}", markup=False)
    figure = (checkpoint_dir or checkpoint_root(registry.url)) / f"{version.ref}-loss.png"
    write_concept_figure(figure, f"{version.ref}", m.get("loss_curve"))
    out.print(f"loss curve: {figure}", markup=False)
    warning = accuracy_warning(version)
    if warning is not None:
        print_warning(err, warning)


# --------------------------------------------------------------- compose
SAMPLER = SamplerSettings()
"""The sampling defaults the options show (see conceptlib.settings)."""


def sampler_options(langevin: bool, or_temperature: bool = False) -> Any:
    """The sampler's options, gathered into one ``settings: SamplerSettings`` argument. compose and eval
    share the annealed sampler's, the guidance and Langevin's (cd concepts); compose also takes OR's
    temperature (eval's protocols fix their own OR)."""
    annealed, guidance = SAMPLER.annealed, SAMPLER.guidance
    options = [
        click.option("--levels", default=annealed.levels, type=click.IntRange(2),
                     help=f"denoiser, dsm: noise levels of the annealed sampler [default: {RESIDUAL_LEVELS} for "
                          f"residual concepts, else {LEVELS}]."),
        click.option("--corrector", default=annealed.corrector, show_default=True,
                     type=click.Choice(["none", "ula", "mala"]),
                     help="denoiser, dsm: Langevin corrector per level (mala: Metropolis accept; dsm only)."),
        click.option("--corrector-steps", default=annealed.corrector_steps, show_default=True,
                     type=click.IntRange(0), help="denoiser, dsm: Langevin corrector steps per level."),
        click.option("--corrector-step", default=annealed.corrector_step, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="denoiser, dsm: corrector step as a fraction of sigma^2."),
        click.option("--corrector-above", default=annealed.corrector_above, type=FiniteRange(0), metavar="SIGMA",
                     help="denoiser, dsm: corrector steps only at noise levels at or above SIGMA [default: "
                          f"{RESIDUAL_CORRECTOR_ABOVE:g} for residual concepts, else every level]."),
        click.option("--sigma-min", default=annealed.sigma_min, show_default=True, type=FiniteRange(0, min_open=True),
                     help="denoiser, dsm: the last noise level, where the image is read off the denoiser."),
        click.option("--eta", default=annealed.eta, type=FiniteRange(0, 1),
                     help="denoiser, dsm: fresh noise per step down (1 Euler-ancestral, 0 deterministic) "
                          f"[default: {RESIDUAL_ETA:g} for residual concepts, else {ETA:g}]."),
        click.option("--guidance", default=guidance.scale, show_default=True, type=FiniteRange(0, min_open=True),
                     help="denoiser, dsm: scale of every concept's E(x|c) - E(x|null) (1 = plain product)."),
        click.option("--classifier-guidance", default=guidance.classifier, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="classifier concepts: scale of their -log p(c|x) (1 = plain product)."),
        click.option("--classifier-boost-below", default=guidance.boost.below, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="denoiser prior: noise level below which classifier guidance grows as 1/sigma."),
        click.option("--classifier-boost-max", default=guidance.boost.maximum, show_default=True,
                     type=FiniteRange(1),
                     help="denoiser prior: the largest factor of that growth (1 = constant guidance)."),
        click.option("--classifier-temperature", default=guidance.classifier_temperature, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="denoiser prior: softmax temperature categorical classifier concepts are read at "
                          "(1 = as trained; warmer keeps pulling once they are sure)."),
        click.option("--prior-guidance", default=guidance.prior, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="denoiser prior: guidance of its condition drawn per sample when the expression does "
                          "not name it (1 = sample p(x) exactly)."),
        click.option("--residual-guidance", default=guidance.residual, show_default=True,
                     type=FiniteRange(0, min_open=True),
                     help="residual concepts: scale of each leaf's difference to their chain's estimate (1 = the "
                          "chain's own conditional estimate)."),
    ]
    if langevin:
        options += [
            click.option("--steps", default=SAMPLER.langevin.steps, show_default=True, type=click.IntRange(1),
                         help="cd: Langevin steps."),
            click.option("--step-size", default=SAMPLER.langevin.step_size, show_default=True,
                         type=FiniteRange(0, min_open=True), help="cd: Langevin step size."),
            click.option("--noise", default=SAMPLER.langevin.noise, show_default=True, type=FiniteRange(0),
                         help="cd: Langevin noise."),
            click.option("--init", default=SAMPLER.langevin.init, show_default=True,
                         type=click.Choice(["noise", "gray"]), help="cd: chain start."),
        ]
    if or_temperature:
        options += [
            click.option("--temperature", default=SAMPLER.or_temperature, show_default=True,
                         type=FiniteRange(0, min_open=True),
                         help="Temperature T of OR: each alternative drawn in proportion to its weight^(1/T) "
                              "(cd concepts: -T logsumexp(-E/T))."),
        ]
    options.append(batch_option("Samples"))

    def decorate(command: Any) -> Any:
        @functools.wraps(command)  # keeps the options declared below this decorator (click's __click_params__)
        def build(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in list(kwargs) if name in SamplerSettings.option_names()}
            return command(settings=SamplerSettings.from_options(values), **kwargs)

        for option in reversed(options):
            build = option(build)
        return build

    return decorate


@cli.command("compose", epilog=GRAMMAR)
@click.argument("expression")
@click.option("-n", "count", default=16, show_default=True, type=click.IntRange(1), help="Samples to draw.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="PNG grid to write.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write each sample as a PNG plus a JSON sidecar.")
@seed_option("the sampler's noise (the same seed gives the same images)")
@sampler_options(langevin=True, or_temperature=True)
@device_option
@click.pass_context
def compose_command(ctx: click.Context, expression: str, count: int, output: Path | None, out_dir: Path | None,
                    seed: int, settings: SamplerSettings, device: str) -> None:
    """Sample images from a composed EXPRESSION, e.g. "position=(0.3,0.7) & color=red & !shape=square".

    A condition outside the range a concept was trained on is sampled but warned about.
    """
    from conceptlib import distributed
    from conceptlib.devices import resolve_device
    from conceptlib.imaging import save_grid
    from conceptlib.jobs import compose_images
    from conceptlib.outputs import check_compose_outputs, write_manifest, write_samples
    from conceptlib.progress import job_progress

    if output is None and out_dir is None:
        raise click.UsageError("say where to write the samples: -o grid.png and/or --out-dir DIR")
    torch_device = ctx.with_resource(distributed.session(resolve_device(device)))
    ranks = distributed.current()
    if output is not None and ranks.world_size > 1:
        raise click.UsageError("under torchrun each rank writes its own samples: use --out-dir DIR, not -o")
    registry = open_registry(ctx)
    check_compose_outputs(output, out_dir, count, registry.files())
    plugins = plugin_manager(ctx)
    with job_progress(err if ranks.is_main else quiet) as progress:
        result = compose_images(registry, plugins, expression, count, settings, seed=seed, device=torch_device,
                                shard=(ranks.rank, ranks.world_size), on_progress=progress.samples("sampling"))
    for warning in result.warnings if ranks.is_main else ():
        print_warning(err, warning)
    if output is not None:
        save_grid(result.images, output)
        out.print(f"wrote {count} samples of {result.provenance['expression']} to {output}")
    if out_dir is not None:
        digests = write_samples(result.images, result.provenance, out_dir, result.first)
        if ranks.active:  # every rank's digests, gathered once all have written: the manifest
            digests = distributed.gather_rows(digests, result.first, count)
            if ranks.is_main:
                write_manifest(out_dir, digests, result.provenance, ranks.world_size)
        if ranks.is_main:
            out.print(f"wrote {count} PNGs with JSON sidecars to {out_dir}"
                      + (f" (by {ranks.world_size} ranks, manifest.json)" if ranks.active else ""))


# ------------------------------------------------------------------ eval
@cli.command("eval")
@click.option("--protocol", "protocols", multiple=True, metavar="NAME",
              help="Protocol to run, repeatable [default: every one whose concepts are registered].")
@click.option("-n", "count", default=500, show_default=True, type=click.IntRange(1), help="Samples per protocol.")
@click.option("--out-dir", default=Path("eval"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where results.md, results.json and sample grids go.")
@click.option("--inference", "inference_n", default=200, show_default=True, type=click.IntRange(0),
              help="Held-out images for position inference (0 skips it).")
@click.option("--judge-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Judge cache [default: $CONCEPTLIB_CACHE or ~/.cache/conceptlib/judges].")
@seed_option("the asked conditions and the sampler [default with --split: the split's]")
@click.option("--split", "split_name", default="any", show_default=True, type=click.Choice(["any", "tune", "report"]),
              help="tune and report ask disjoint halves of the conditions (a checkerboard of position cells and "
                   "asked values) with their own seeds (0 and 7): choose settings on tune, quote report.")
@sampler_options(langevin=True)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print results.json's contents instead of the table.")
@click.option("--keep-samples", is_flag=True,
              help="Also write each protocol's images to OUT_DIR/samples/PROTOCOL.npz (the samples, the real renders "
                   "they were told apart from, what each was asked), to grade them again without sampling.")
@click.pass_context
def eval_command(ctx: click.Context, protocols: tuple[str, ...], count: int, out_dir: Path, inference_n: int,
                 judge_cache: Path | None, seed: int, split_name: str, settings: SamplerSettings, device: str,
                 as_json: bool, keep_samples: bool) -> None:
    """Grade the registry's concepts with an independent judge (paper Tables 1-3).

    Writes results.md, results.json and one grid per protocol, each tile captioned with what was asked.
    """
    from conceptlib.devices import resolve_device
    from conceptlib.evaluation import PROTOCOLS, SPLITS, evaluate_registry
    from conceptlib.progress import job_progress
    from conceptlib.report import write_report

    split = SPLITS[split_name]
    if ctx.get_parameter_source("seed") is click.core.ParameterSource.DEFAULT:
        seed = split.seed
    registry = open_registry(ctx)
    plugins = plugin_manager(ctx)
    known = {c.name for c in registry.concepts()}
    names = list(protocols) or [name for name, p in PROTOCOLS.items() if set(p.concepts) <= known]
    if not names:
        raise click.UsageError("no protocol can run: the registry needs position, color or shape concepts")
    phases: dict[str, Any] = {}
    with job_progress(err) as progress:
        def on_phase(name: str, done: int, total: int) -> None:
            if name not in phases:
                phases[name] = progress.phase(name)
            phases[name](done, total)

        run = evaluate_registry(registry, plugins, names, count, settings, seed, resolve_device(device),
                                judge_cache, inference_n, on_phase=on_phase, split=split)
    markdown, data = write_report(run.results, run.extra, out_dir, out_dir / "samples" if keep_samples else None)
    if as_json:
        click.echo(data.read_text(), nl=False)
        return
    print_listing(out, ("protocol", "met", "metrics"),
                  [(r.name, "yes" if r.passed else "no", ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items()))
                   for r in run.results], wrap={"metrics": 30})
    for label, figures in run.extra.get("position_inference", {}).items():
        out.print(f"position inference, {label}: mean abs error {figures['mae']:.4f} (n={figures['n']})")
    out.print(f"wrote {markdown} and {data}", markup=False)


# ----------------------------------------------------------------- infer
@cli.command()
@click.argument("ref", metavar="NAME[@V]")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", default=9, show_default=True, type=click.IntRange(2),
              help="Candidates per axis of a continuous condition before gradient refinement.")
@click.option("--refine-steps", default=30, show_default=True, type=click.IntRange(0),
              help="Adam steps that refine a continuous condition from the best grid candidate (0: grid only).")
@click.option("--each", is_flag=True, help="Infer each image on its own instead of all together.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@device_option
@click.pass_context
def infer(ctx: click.Context, ref: str, images: tuple[Path, ...], grid: int, refine_steps: int, each: bool,
          as_json: bool, device: str) -> None:
    """Infer the value of concept NAME that best explains IMAGES (argmin_c sum_i E(x_i | c), paper eq. 12).

    Images unlike the concept's training data (a typicality test against held-out images) are answered
    with a warning: the value found for them may mean little.
    """
    from conceptlib.cautions import typicality
    from conceptlib.concepts import load_concept
    from conceptlib.devices import resolve_device
    from conceptlib.imaging import images_to_tensor, load_images
    from conceptlib.inference import InferenceConfig, infer_each
    from conceptlib.inference import infer as infer_value
    from conceptlib.progress import job_progress
    from conceptlib.registry import split_ref
    from conceptlib.residual import load_chain

    name, version_ref = split_ref(ref)
    registry = open_registry(ctx)
    version = registry.resolve(name, version_ref)
    torch_device = resolve_device(device)
    pixels = load_images(images, int(version.hyperparameters["image_size"]))
    plugins = plugin_manager(ctx)
    concept = load_concept(registry, plugins, version, torch_device)
    x = images_to_tensor(pixels, torch_device)
    config = InferenceConfig(grid=grid, refine_steps=refine_steps)
    chain = load_chain(registry, plugins, [concept], torch_device)
    with job_progress(err) as progress:
        step = progress.phase("inferring")
        found = (infer_each(concept, x, config, chain=chain, on_progress=step) if each
                 else [infer_value(concept, x, config, chain=chain, on_progress=step)])
    labels = [str(p) for p in images] if each else [f"{len(images)} image(s) together"]
    try:
        values = [r.value for r in found] if each else [found[0].value] * len(images)
        warnings = typicality(registry, plugins, concept, x, values).warnings(distinct_names(images))
    except ConceptError as exc:
        warnings = [f"could not compare the images with {version.ref}'s training data: {exc}"]
    if as_json:
        emit_json([{"images": label, "concept": str(version.ref), "value": r.value, "energy": r.energy,
                    "candidates": [{"value": v, "energy": e} for v, e in r.candidates]}
                   for label, r in zip(labels, found)])
    else:
        print_listing(out, ("images", str(version.ref), "energy", "next best"),
                      [(label, value_text(r.value, 3), f"{r.energy:.3f}",
                        ", ".join(value_text(v, 2) for v, _ in r.candidates[1:3]))
                       for label, r in zip(distinct_names(images) if each else labels, found)],
                      wrap={"next best": 14})
    for warning in warnings:
        print_warning(err, warning)


# ------------------------------------------------------- list/show/history
@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List the registered concepts."""
    from conceptlib.listing import read_concepts
    from conceptlib.schema import schema_from_json

    concepts = read_concepts(ctx.obj["registry"])  # stdlib sqlite3, no SQLAlchemy: where it is sure of the file
    if concepts is None:
        concepts = [c.to_json() for c in open_registry(ctx).concepts()]
    if as_json:
        emit_json(concepts)
        return
    if not concepts:
        out.print("no concepts yet; train one with 'concept add NAME --source scenes'")
        return
    print_listing(out, ("concept", "current", "versions", "aliases", "condition"),
                  [(c["name"], str(c["current"]), str(c["versions"]),
                    ", ".join(f"@{a}→{n}" for a, n in c["aliases"].items()), schema_from_json(c["schema"]).describe())
                   for c in concepts], wrap={"condition": 20, "aliases": 10})


@cli.command()
@click.argument("ref", metavar="NAME[@V]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--energies", is_flag=True,
              help="Also histogram the concept's energies on fresh images of its source (paper A.1).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Draw the loss curve and the --energies histograms (computed for it) to a PNG.")
@click.option("-n", "count", default=256, show_default=True, type=click.IntRange(2, 100_000),
              help="Images for --energies.")
@device_option
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool, energies: bool, plot: Path | None, count: int,
         device: str) -> None:
    """Show a concept's current version (or NAME@V / NAME@ALIAS) in full.

    With --energies: the concept's energy on held-out images with their own condition, with a wrong one,
    and on noise, and how often the own condition ranks below the wrong one (0.5 is chance).
    """
    from conceptlib.registry import split_ref

    name, version_ref = split_ref(ref)
    registry = open_registry(ctx)
    version = registry.resolve(name, version_ref)
    histograms = _energy_histograms(ctx, registry, version, count, device) if energies or plot else None
    if plot is not None:
        from conceptlib.plots import write_concept_figure

        write_concept_figure(plot, str(version.ref), version.metrics.get("loss_curve"),
                             histograms.to_json() if histograms else None)
    if as_json:
        emit_json({**version.to_json(), **({"energies": histograms.to_json()} if histograms else {})})
        return
    fields = version.to_json()
    curve = fields["metrics"].get("loss_curve")
    if curve:  # two hundred numbers say less than the picture: name it instead
        fields["metrics"] = {**fields["metrics"], "loss_curve": f"{len(curve['loss'])} points (--plot draws them)"}
    shown = [printable(v if isinstance(v, str) else json.dumps(v)) for v in fields.values()]
    for line in records(list(fields), [shown], out.width):
        out.print(line, markup=False, highlight=False)
    if histograms is not None and energies:
        from conceptlib.histograms import text_histogram

        means = ", ".join(f"{k} {v.mean():.4g}" for k, v in histograms.energies.items())
        out.print(f"\nenergies on {count} fresh images (█ matched ▒ mismatched ░ noise); mean {means}; own "
                  f"condition ranked below a wrong one {histograms.ranked:.2f} (chance 0.50)", markup=False)
        for row in text_histogram(histograms):
            out.print(row, markup=False, highlight=False)
    if plot is not None:
        out.print(f"wrote {plot}", markup=False)


def _energy_histograms(ctx: click.Context, registry: Any, version: Any, count: int, device: str) -> Any:
    """Load the concept and a fresh seed of its source, then score the three populations."""
    from conceptlib.concepts import load_concept
    from conceptlib.devices import resolve_device
    from conceptlib.histograms import HELD_OUT_SEED_OFFSET, energy_histograms

    plugins = plugin_manager(ctx)
    torch_device = resolve_device(device)
    concept = load_concept(registry, plugins, version, torch_device)
    source = plugins.source(version.source)
    params = {**version.source_params, "n": count,
              "seed": int(version.source_params.get("seed", 0)) + HELD_OUT_SEED_OFFSET}
    dataset = source.load(source.resolve_params(params))
    return energy_histograms(concept, dataset)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with dataset and weights hashes in full).")
@click.pass_context
def history(ctx: click.Context, name: str, as_json: bool) -> None:
    """List every version of NAME, oldest first (* marks the current one)."""
    versions = open_registry(ctx).history(name)
    if as_json:
        emit_json([v.to_json() for v in versions])
        return
    print_listing(out, ("version", "created (UTC)", "source", "trained with", "loss", "weights"),
                  [(f"{v.number}{'*' if v.is_current else ''}" + "".join(f" @{a}" for a in v.aliases),
                    v.created_at.strftime("%Y-%m-%d %H:%M"), v.source, ", ".join(map(str, v.lineage)) or "-",
                    _number(v.metrics.get("loss")), v.weights_sha256[:8]) for v in versions],
                  wrap={"trained with": 11})


def _number(value: Any) -> str:
    """A metric as a table shows it; a registry edited by hand may hold anything there."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


# ------------------------------------------------------- rollback / alias
@cli.command()
@click.argument("name")
@click.option("--to", "to", metavar="V", help="Version number or alias [default: the one before current].")
@click.pass_context
def rollback(ctx: click.Context, name: str, to: str | None) -> None:
    """Point NAME at an older (or, to undo, newer) version. Nothing is deleted."""
    before, after = open_registry(ctx).rollback(name, to)
    out.print(f"{name}: current version {before} -> {after}")


@cli.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", required=False)
@click.option("--delete", is_flag=True, help="Remove the alias.")
@click.pass_context
def alias(ctx: click.Context, name: str, alias: str, version: str | None, delete: bool) -> None:
    """Point NAME@ALIAS at VERSION (default: the current one), or --delete it."""
    registry = open_registry(ctx)
    if delete:
        registry.remove_alias(name, alias)
        out.print(f"removed {name}@{alias}")
        return
    number = registry.set_alias(name, alias, version)
    out.print(f"{name}@{alias} -> version {number}")


# -------------------------------------------------------- export / import
@cli.command("export")
@click.argument("ref", metavar="NAME[@V]")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .cpt file to write.")
@click.pass_context
def export_command(ctx: click.Context, ref: str, output: Path) -> None:
    """Write a concept version, its schema, provenance and whole lineage to one file (no pickle)."""
    from conceptlib.registry import split_ref
    from conceptlib.registry.transfer import export_concept

    name, version_ref = split_ref(ref)
    registry = open_registry(ctx)
    written, digest = export_concept(registry, registry.resolve(name, version_ref), output)
    carried = f" with its lineage {', '.join(map(str, written[:-1]))}" if len(written) > 1 else ""
    out.print(f"exported {written[-1]}{carried} to {output} (manifest sha256 {digest})")


@cli.command("import")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def import_command(ctx: click.Context, path: Path) -> None:
    """Add the versions in a .cpt file as new versions here, after verifying every sha256."""
    from conceptlib.jobs import import_concept

    registry = open_registry(ctx, create=True)
    concept_file, results = import_concept(registry, plugin_manager(ctx), path)
    for result in results:
        if result.copied:
            out.print(f"imported {result.origin} as {result.ref}")
        else:
            out.print(f"{result.origin} is already here as {result.ref}; kept it")
    if concept_file.digest is None:
        err.print(f"warning: {path} carries no manifest_sha256 (an older export): only its weights were verified")
    checked = f" (manifest sha256 {concept_file.digest})" if concept_file.digest else ""
    out.print(f"{concept_file.ref} from {path}{checked} is {results[-1].ref} in {registry.display_url}")


# --------------------------------------------------------------- sources
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sources(ctx: click.Context, as_json: bool) -> None:
    """List dataset sources, architectures and the plugins that provide them."""
    plugins = plugin_manager(ctx)
    rows = [(r.kind, r.name, r.plugin, r.origin, getattr(r.item, "description", ""))
            for kind in ("source", "architecture") for r in plugins.registrations(kind)]
    if as_json:
        emit_json([dict(zip(("kind", "name", "plugin", "origin", "description"), row)) for row in rows])
        return
    print_listing(out, ("name", "kind", "from", "description"),
                  [(name, kind, f"plugin {plugin}, {origin}", description)
                   for kind, name, plugin, origin, description in rows], wrap={"description": 30}, heading=3)


@cli.group(invoke_without_command=True)
@click.pass_context
def source(ctx: click.Context) -> None:
    """Inspect a dataset source."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@source.command("sample")
@click.argument("source_name", metavar="SOURCE")
@click.option("-n", "count", default=16, show_default=True, type=click.IntRange(1), help="Images to write.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the PNGs, labels.jsonl and contact.png go.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Source parameter, repeatable (as 'concept add --param').")
@click.pass_context
def source_sample(ctx: click.Context, source_name: str, count: int, out_dir: Path, params: tuple[str, ...]) -> None:
    """Write N images of SOURCE as PNGs plus labels.jsonl with each image's attributes, and contact.png:
    every image captioned with its labels, to see a source at a glance."""
    from conceptlib.outputs import check_source_outputs, write_source_samples
    from conceptlib.progress import job_progress
    from conceptlib.registry.engine import registry_files, resolve_url

    check_source_outputs(out_dir, source_name, count, registry_files(resolve_url(ctx.find_root().obj["registry"])))
    src = plugin_manager(ctx.find_root()).source(source_name)
    given = parse_pairs(params, "--param")
    if "n" in src.default_params and "n" not in given:
        given["n"] = count
    resolved = src.resolve_params(given)
    with job_progress(err) as progress:
        dataset = src.load(resolved, progress=progress.phase("rendering"))
    written = write_source_samples(dataset, min(count, len(dataset)), out_dir, source_name, resolved)
    out.print(f"wrote {written} images, labels.jsonl and contact.png to {out_dir}", markup=False)


def option_defaults(command: str) -> dict[str, Any]:
    """A subcommand's option defaults by parameter name: benchmarks and tests read what users get from here."""
    return {param.name: param.default for param in cli.commands[command].params}


def main() -> None:
    cli()
