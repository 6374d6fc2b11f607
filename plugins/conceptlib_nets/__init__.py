"""First-party energy-network architectures for conceptlib.

torch is imported only when a network is built, so listing plugins stays fast.
"""

from collections.abc import Mapping
from typing import Any

from conceptlib.architectures import Architecture
from conceptlib.hookspecs import hookimpl
from conceptlib.schema import ConditionSchema

SMALL_CONFIG: dict[str, Any] = {"channels": [32, 64, 64], "embed": 128, "bump_sigma": 0.08}


def build_small(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]):
    from conceptlib_nets.small import SmallEnergyNet

    return SmallEnergyNet(schema, image_size, {**SMALL_CONFIG, **config})


@hookimpl
def conceptlib_architectures() -> list[Architecture]:
    return [
        Architecture(
            name="small",
            build=build_small,
            default_config=SMALL_CONFIG,
            description="fast conv net, FiLM-conditioned; spatial conditions as a bump map",
        )
    ]
