"""First-party energy-network architectures for conceptlib.

torch is imported only when a network is built, so listing plugins stays fast.
"""

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from conceptlib.architectures import Architecture
from conceptlib.hookspecs import hookimpl
from conceptlib.schema import ConditionSchema
from conceptlib_nets.configs import check_classifier, check_paper, check_residual, check_small, check_unet

if TYPE_CHECKING:
    from conceptlib_nets.paper import PaperEnergyNet

SMALL_CONFIG: dict[str, Any] = {"channels": [32, 64, 64], "embed": 128, "bump_sigma": 0.08}
UNET_CONFIG: dict[str, Any] = {
    "channels": [48, 64, 64], "embed": 128, "patch": 2, "bump_sigma": 0.08, "sigma_data": 0.25, "refine": 16,
    "condition_frequencies": 4,
}


def build_small(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]):
    from conceptlib_nets.small import SmallEnergyNet

    return SmallEnergyNet(schema, image_size, {**SMALL_CONFIG, **config})


CLASSIFIER_CONFIG: dict[str, Any] = {"channels": [32, 64, 64], "embed": 64, "sigma_data": 0.25}


def build_classifier(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]):
    from conceptlib_nets.classifier import NoisyClassifierEnergy

    return NoisyClassifierEnergy(schema, image_size, {**CLASSIFIER_CONFIG, **config})


def build_unet(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]):
    from conceptlib_nets.unet import DenoisingEnergyNet

    return DenoisingEnergyNet(schema, image_size, {**UNET_CONFIG, **config})


def migrate_unet(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored before ``refine`` existed: those weights have no refinement layers; before
    ``condition_frequencies``: they read scalar conditions raw."""
    return {"refine": 0, "condition_frequencies": 0, **stored}


def migrate_residual(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored before ``condition_frequencies`` existed: those weights read scalar conditions raw."""
    return {"condition_frequencies": 0, **stored}


RESIDUAL_CONFIG: dict[str, Any] = {**UNET_CONFIG, "context": 6, "residual": True}
"""The U-Net as a residual concept: it reads the frozen concepts' estimate and template beside the image."""


def build_residual(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]):
    from conceptlib_nets.unet import DenoisingEnergyNet

    return DenoisingEnergyNet(schema, image_size, {**RESIDUAL_CONFIG, **config})


PAPER64_CONFIG: dict[str, Any] = {
    "channels": [64, 64, 128, 128, 256], "extra_blocks": 0, "pool": "mean", "embed": 128, "bump_sigma": 0.08,
}
"""Fig. 17a: the stem's width, then one downsampling residual block per further entry."""
PAPER128_CONFIG: dict[str, Any] = {
    "channels": [64, 64, 128, 256, 512, 1024], "extra_blocks": 1, "pool": "sum", "embed": 256, "bump_sigma": 0.08,
}
"""Fig. 17c: five downsampling blocks, one more block at 1024 channels, global sum pooling."""


def build_paper(
    defaults: Mapping[str, Any], schema: ConditionSchema, image_size: int, config: Mapping[str, Any]
) -> "PaperEnergyNet":
    """The paper network with ``defaults`` overlaid by ``config`` (registered once per figure via partial)."""
    from conceptlib_nets.paper import PaperEnergyNet

    return PaperEnergyNet(schema, image_size, {**defaults, **config})


@hookimpl
def conceptlib_architectures() -> list[Architecture]:
    return [
        Architecture(
            name="small",
            build=build_small,
            default_config=SMALL_CONFIG,
            check_config=check_small,
            description="fast conv net, FiLM-conditioned; spatial conditions as a bump map (objective cd)",
        ),
        Architecture(
            name="unet",
            build=build_unet,
            default_config=UNET_CONFIG,
            check_config=check_unet,
            description="noise-conditioned U-Net denoiser as an energy, null condition (objectives denoiser, dsm)",
            migrate=migrate_unet,
        ),
        Architecture(
            name="residual",
            build=build_residual,
            default_config=RESIDUAL_CONFIG,
            check_config=check_residual,
            description="U-Net correction to frozen denoisers, reading their estimate (objective residual)",
            migrate=migrate_residual,
        ),
        Architecture(
            name="classifier",
            build=build_classifier,
            default_config=CLASSIFIER_CONFIG,
            check_config=check_classifier,
            description="noise-conditioned classifier energy -log p(c | x) (objective classifier)",
        ),
        Architecture(
            name="paper64",
            build=partial(build_paper, PAPER64_CONFIG),
            default_config=PAPER64_CONFIG,
            check_config=check_paper,
            description="the paper's 64x64 scenes ResNet (A.4): spectral norm, Swish, FiLM per block (objective cd)",
        ),
        Architecture(
            name="paper128",
            build=partial(build_paper, PAPER128_CONFIG),
            default_config=PAPER128_CONFIG,
            check_config=check_paper,
            description="the paper's 128x128 CelebA ResNet (A.4), 42M parameters, for a GPU (objective cd)",
        ),
    ]
