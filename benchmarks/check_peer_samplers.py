"""Proves the peer samplers' wiring on denoisers whose exact answer is known; exit 1 if any check fails.

Run in the peer venv (``make benchmarks/.venv-peers/.installed`` first), not under pytest (the project venv
has no peers): ``benchmarks/.venv-peers/bin/python benchmarks/check_peer_samplers.py``.

Two data distributions, every pixel independent, both with mean 0.5 (the data mean the samplers' start
``0.5 + sigma_max * eps`` assumes), each with its exact denoiser ``D(x, sigma) = E[x0 | x]``:

- Gaussian, ``x0 ~ N(0.5, 0.1^2)``: ``D = 0.5 + (x - 0.5) * 0.01 / (0.01 + sigma^2)``; samples must have
  mean 0.5 and std 0.1. Linear, so it checks the scalings (VE/VP, centring, the sigma each call gets).
- two points, ``x0 = 0.6`` with probability 0.75 else 0.2: ``D`` is the posterior mean, a sigmoid in x;
  samples must sit on the two points (within 1e-3: the last step lands on ``D`` at sigma 0) with 0.75 of
  them on the upper one. Nonlinear, so it checks that the samplers follow the score through the split,
  not only the moments.

Each sampler runs at 200, 50 and 8 steps, n = 2000 images of 8x8, and must converge to the truth: tight
tolerances at 200 steps, looser at 50 and loose at 8, since Euler-type first-order solvers are off by
about 2.4/steps in std there (Euler ancestral: -1.6%, -5.6%, -29%), the same in both libraries. The start
``sigma_max * eps`` lacks the data's variance, so even an exact ODE solve ends at std 0.0995, not 0.1.
Every call of ``D`` is counted, so ``evaluations(steps)`` is checked against what the sampler spent, and
the sigmas it was called at are compared with the Karras schedule on [SIGMA_MIN, SIGMA_MAX]. Two runs from
the same seeded generator, with torch's global generator seeded differently before each, must give
identical images (all randomness from the generator passed in). torchsde warns once that a Brownian-tree
query fell below its start (float32 sigma_min against the float it stored): k-diffusion's own default
noise sampler does the same; the query is 1e-10 outside.

Where both libraries implement the same method (Euler, Euler ancestral, Heun, DPM-Solver++ 2M), their images
from the same seed must agree pixel for pixel, within float32 noise and the float32 beta table's 5e-4 in
sigma: two independent implementations behind two different adapters (diffusers' VP model input, k-diffusion's
VE call). Two controls wire the diffusers side wrong on purpose, the ways its adapter could be (the VP input
not scaled back to VE; sigma passed in VP units) and must be caught by one of the checks.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch
from peer_samplers import (  # this script's own folder is first on sys.path
    SIGMA_MAX,
    SIGMA_MIN,
    Denoiser,
    PeerSampler,
    peer_samplers,
    skipped,
)

N, IMAGE_SIZE, SEED = 2000, 8, 0
STEPS = (200, 50, 8)
GAUSS_STD = 0.1
LOW, HIGH, P_HIGH = 0.2, 0.6, 0.75
ON_POINT = 1e-3  # farther than this from both points: the run did not end on a denoising step to sigma 0
FLIP = 0.1  # two images of the same pixel this far apart sit on different points
SCHEDULE_TOL = 2e-3  # relative; the float32 beta tables put diffusers' sigmas within about 5e-4
PAIRS = (
    ("diffusers Euler", "k-diffusion euler"),
    ("diffusers Euler ancestral", "k-diffusion euler_ancestral"),
    ("diffusers Heun", "k-diffusion heun"),
    ("diffusers DPM-Solver++ 2M", "k-diffusion dpmpp_2m"),
)
PAIR_MEAN_DIFF = 1e-4  # mean |difference| of the Gaussian images
PAIR_FLIPPED = 1e-3  # share of two-point pixels that sit on different points in the two libraries


@dataclass(frozen=True)
class Tolerance:
    mean: float  # |mean - 0.5|
    std: float  # |std / 0.1 - 1|
    fraction: float  # |share on HIGH - 0.75|
    off_point: float  # share of two-point pixels off the points


TOLERANCES = {200: Tolerance(0.003, 0.02, 0.02, 0.01), 50: Tolerance(0.003, 0.06, 0.03, 0.01),
              8: Tolerance(0.01, 0.30, 0.06, 0.05)}


def gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.view(-1, 1, 1, 1)
    return 0.5 + (x - 0.5) * GAUSS_STD**2 / (GAUSS_STD**2 + sigma**2)


def two_point(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Posterior mean of x0 in {LOW, HIGH}: the log odds of HIGH grow by (HIGH - LOW)(x - mid) / sigma^2."""
    sigma = sigma.view(-1, 1, 1, 1)
    log_odds = math.log(P_HIGH / (1 - P_HIGH)) + (HIGH - LOW) * (x - (LOW + HIGH) / 2) / sigma**2
    return LOW + (HIGH - LOW) * torch.sigmoid(log_odds)


def vp_input_taken_as_ve(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Control: an adapter that forgot to scale diffusers' VP model input back to VE."""
    return gaussian(0.5 + (x - 0.5) / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt(), sigma)


def sigma_in_vp_units(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Control: an adapter that passed the VP noise level sigma / sqrt(1 + sigma^2) as the VE one."""
    return gaussian(x, sigma / (1 + sigma**2).sqrt())


@dataclass
class Counted:
    """A denoiser that records each call: how many, the batch sizes, the sigmas."""

    denoise: Denoiser
    calls: int = 0
    batches: set[int] = field(default_factory=set)
    sigmas: list[float] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batches.add(x.shape[0])
        self.sigmas.append(float(sigma[0]))
        return self.denoise(x, sigma)


def draw(sampler: PeerSampler, denoise: Denoiser, steps: int) -> tuple[torch.Tensor, Counted]:
    counted = Counted(denoise)
    images = sampler.run(counted, N, IMAGE_SIZE, steps, torch.Generator().manual_seed(SEED), torch.device("cpu"))
    return images, counted


def karras(steps: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
    return (high + ramp * (low - high)) ** 7


def schedule_error(seen: list[float], steps: int) -> float:
    """Largest relative gap between a Karras level and the nearest sigma the denoiser was called at."""
    seen_t = torch.tensor(seen, dtype=torch.float64)
    return max(float(((seen_t - level) / level).abs().min()) for level in karras(steps))


def off_points(images: torch.Tensor) -> float:
    return float((torch.minimum((images - LOW).abs(), (images - HIGH).abs()) > ON_POINT).double().mean())


def share_high(points: torch.Tensor) -> float:
    return float((points > (LOW + HIGH) / 2).double().mean())


def truth_failures(gauss: torch.Tensor, points: torch.Tensor | None, steps: int) -> list[str]:
    tol = TOLERANCES[steps]
    checks = [("mean", abs(float(gauss.mean()) - 0.5) > tol.mean),
              ("std", abs(float(gauss.std()) / GAUSS_STD - 1) > tol.std)]
    if points is not None:
        checks += [("two-point share", abs(share_high(points) - P_HIGH) > tol.fraction),
                   ("off the points", off_points(points) > tol.off_point)]
    return [name for name, bad in checks if bad]


def pair_failures(gauss: tuple[torch.Tensor, torch.Tensor], points: tuple[torch.Tensor, torch.Tensor] | None,
                  ) -> tuple[float, float, list[str]]:
    mean_diff = float((gauss[0] - gauss[1]).abs().mean())
    flipped = float(((points[0] - points[1]).abs() > FLIP).double().mean()) if points else 0.0
    return mean_diff, flipped, [name for name, bad in (("images differ", mean_diff > PAIR_MEAN_DIFF),
                                                       ("points flipped", flipped > PAIR_FLIPPED)) if bad]


@dataclass
class Result:
    gauss: torch.Tensor
    points: torch.Tensor
    failures: list[str]
    line: str


def check(sampler: PeerSampler, steps: int, reproducible: bool) -> Result:
    gauss, counted = draw(sampler, gaussian, steps)
    points, _ = draw(sampler, two_point, steps)
    low_seen, high_seen = min(counted.sigmas), max(counted.sigmas)
    schedule = schedule_error(counted.sigmas, steps)
    failures = [name for name, bad in (
        ("evaluations", counted.calls != sampler.evaluations(steps) or counted.batches != {N}),
        ("sigma range", max(abs(low_seen / SIGMA_MIN - 1), abs(high_seen / SIGMA_MAX - 1)) > SCHEDULE_TOL),
        ("schedule", schedule > SCHEDULE_TOL),
        ("reproducibility", not reproducible),
    ) if bad] + truth_failures(gauss, points, steps)
    line = (f"| {sampler.name} | {steps} | {counted.calls} | {sampler.evaluations(steps)} "
            f"| {low_seen:.6f}–{high_seen:.6f} | {schedule:.1e} | {float(gauss.mean()):.4f} | {float(gauss.std()):.4f} "
            f"| {share_high(points):.4f} "
            f"| {off_points(points):.4f} | {'yes' if reproducible else 'NO'} | {verdict(failures)} |")
    return Result(gauss, points, failures, line)


def same_images(sampler: PeerSampler) -> bool:
    """Same generator seed, different global seeds: identical images only if the generator drives it all."""
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(draw(sampler, two_point, STEPS[-1])[0])
    return torch.equal(*runs)


def verdict(failures: list[str]) -> str:
    return "ok" if not failures else "FAIL: " + ", ".join(failures)


def main() -> int:
    torch.set_num_threads(1)
    samplers = {sampler.name: sampler for sampler in peer_samplers()}
    for name, why in skipped().items():
        print(f"skipped {name}: {why}")
    print("| sampler | steps | evals counted | evaluations(steps) | sigmas seen | schedule err | mean | std "
          "| share on 0.6 | off points | same seed, same images | result |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    results: dict[tuple[str, int], Result] = {}
    for name, sampler in samplers.items():
        reproducible = same_images(sampler)
        for steps in STEPS:
            results[name, steps] = check(sampler, steps, reproducible)
            print(results[name, steps].line, flush=True)
    failed = any(result.failures for result in results.values()) or not samplers

    print("\n| same method, two libraries | steps | mean abs diff (Gaussian) | share of points flipped | result |")
    print("|---|---:|---:|---:|---|")
    for pair in PAIRS:
        if not all(name in samplers for name in pair):
            continue
        for steps in STEPS:
            a, b = results[pair[0], steps], results[pair[1], steps]
            mean_diff, flipped, failures = pair_failures((a.gauss, b.gauss), (a.points, b.points))
            failed |= bool(failures)
            print(f"| {pair[0]} / {pair[1]} | {steps} | {mean_diff:.1e} | {flipped:.1e} | {verdict(failures)} |")

    print("\n| control: diffusers Euler wired wrong on purpose, 200 steps | mean | std | against k-diffusion euler "
          "| caught by |")
    print("|---|---:|---:|---:|---|")
    euler, k_euler = samplers.get(PAIRS[0][0]), results.get((PAIRS[0][1], STEPS[0]))
    for name, denoise in (("VP input taken as VE", vp_input_taken_as_ve), ("sigma in VP units", sigma_in_vp_units)):
        if euler is None or k_euler is None:
            break
        gauss, _ = draw(euler, denoise, STEPS[0])
        mean_diff, _, pair = pair_failures((gauss, k_euler.gauss), None)
        caught = truth_failures(gauss, None, STEPS[0]) + pair
        failed |= not caught
        print(f"| {name} | {float(gauss.mean()):.4f} | {float(gauss.std()):.4f} | {mean_diff:.1e} "
              f"| {', '.join(caught) or 'MISSED'} |")

    print(f"\nexpected: mean 0.5, std {GAUSS_STD}, share on 0.6 {P_HIGH}; n={N} images of {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"seed {SEED}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
