"""First-party energy-network architectures for conceptlib.

torch is imported only when a network is built, so listing plugins stays fast.
"""

from collections.abc import Mapping
from typing import Any

from conceptlib.architectures import Architecture
from conceptlib.hookspecs import hookimpl
from conceptlib.schema import ConditionSchema

SMALL_CONFIG: dict[str, Any] = {"channels": [32, 64, 64], "embed": 128, "bump_sigma": 0.08}
UNET_CONFIG: dict[str, Any] = {
    "channels": [48, 64, 64], "embed": 128, "patch": 2, "bump_sigma": 0.08, "sigma_data": 0.25,
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


@hookimpl
def conceptlib_architectures() -> list[Architecture]:
    return [
        Architecture(
            name="small",
            build=build_small,
            default_config=SMALL_CONFIG,
            description="fast conv net, FiLM-conditioned; spatial conditions as a bump map (objective cd)",
        ),
        Architecture(
            name="unet",
            build=build_unet,
            default_config=UNET_CONFIG,
            description="noise-conditioned U-Net denoiser as an energy, null condition (objective dsm)",
        ),
        Architecture(
            name="classifier",
            build=build_classifier,
            default_config=CLASSIFIER_CONFIG,
            description="noise-conditioned classifier energy -log p(c | x) (objective classifier)",
        ),
    ]
