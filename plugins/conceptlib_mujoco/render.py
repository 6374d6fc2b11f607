"""Rendering :class:`~conceptlib_mujoco.variants.Scenes` with MuJoCo, one offscreen renderer per dataset.

The MJCF model is built once with one geom slot per object; each image only rewrites the slots' type,
size, pose and color and the light's direction and strength, so no model is recompiled per image. The
directional light is placed back along its direction from the floor's centre, which keeps its shadow
map's depth range tight, and its shadow box (``shadowclip``) reaches past the visible floor's far
corners: either one wrong left speckled "shadow acne" on the floor. The shadow map scales with the
image (8x its side): a 4096 map cost ~100 ms per image here, 512 about 5 ms.

MuJoCo renders on the CPU through EGL (Mesa's llvmpipe) unless ``MUJOCO_GL`` says otherwise.
"""

from __future__ import annotations

import math
import os
from types import ModuleType
from typing import Any

import numpy as np

from conceptlib.errors import PluginError
from conceptlib.sources import Progress
from conceptlib_mujoco.camera import AXES, FOVY_DEG, POSITION, unproject
from conceptlib_mujoco.variants import PALETTE, SHAPES, Scenes

FLOOR_RGB = (0.55, 0.55, 0.55)
LIGHT_DISTANCE = 2.0
PROGRESS_EVERY = 64
INSTALL_HINT = "pip install 'conceptlib[mujoco]'"


def import_mujoco() -> ModuleType:
    """The ``mujoco`` module, set to render headless (EGL) unless ``MUJOCO_GL`` chose otherwise."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
    except ModuleNotFoundError as exc:
        if exc.name != "mujoco":
            raise PluginError(f"MuJoCo failed to import ({exc}); reinstall it: {INSTALL_HINT}") from None
        raise PluginError(f"source 'mujoco' needs MuJoCo, which is not installed: {INSTALL_HINT}") from None
    except (ImportError, RuntimeError) as exc:  # a broken install, or an invalid MUJOCO_GL
        raise PluginError(f"MuJoCo failed to import ({exc}); check MUJOCO_GL or reinstall: {INSTALL_HINT}") from None
    return mujoco


def scene_xml(image_size: int, slots: int) -> str:
    """MJCF of the floor, the light, the camera and ``slots`` object geoms (slot 0: the central object)."""
    axes = " ".join(f"{v:.9f}" for v in (*AXES[0], *AXES[1]))
    eye = " ".join(f"{v:.9f}" for v in POSITION)
    geoms = "\n    ".join(
        f'<geom name="object{i}" type="sphere" size="0.1" pos="0 0 0.1" rgba="1 1 1 1"/>' for i in range(slots)
    )
    floor = " ".join(map(str, FLOOR_RGB))
    return f"""<mujoco model="conceptlib scene">
  <statistic extent="1" center="0 0 0.1"/>
  <visual>
    <global offwidth="{image_size}" offheight="{image_size}"/>
    <quality shadowsize="{8 * image_size}"/>
    <map shadowclip="1.8"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.25 0.25 0.25" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light name="sun" directional="true" castshadow="true" pos="0 0 2" dir="0 0 -1" diffuse="0.7 0.7 0.7"
           specular="0.2 0.2 0.2"/>
    <geom name="floor" type="plane" size="1.6 1.6 0.1" rgba="{floor} 1"/>
    {geoms}
    <camera name="eye" pos="{eye}" xyaxes="{axes}" fovy="{FOVY_DEG}"/>
  </worldbody>
</mujoco>"""


def render_scenes(scenes: Scenes, image_size: int, progress: Progress | None = None) -> np.ndarray:
    """uint8 ``(N, image_size, image_size, 3)``: every scene through the fixed camera."""
    mujoco = import_mujoco()
    slots = 1 + scenes.clutter_shape.shape[1]
    model = mujoco.MjModel.from_xml_string(scene_xml(image_size, slots))
    data = mujoco.MjData(model)
    try:
        renderer = mujoco.Renderer(model, image_size, image_size)
    except Exception as exc:  # no usable OpenGL: name the setting and the packages, not a traceback
        raise PluginError(
            f"MuJoCo could not render offscreen with MUJOCO_GL={os.environ.get('MUJOCO_GL')} ({exc}); install "
            "the EGL/Mesa libraries (apt-get install libegl1 libgl1-mesa-dri) or set MUJOCO_GL=osmesa"
        ) from None
    types = [_geom_type(mujoco, shape) for shape in SHAPES]
    n = len(scenes)
    centres = unproject(scenes.position, scenes.size[:, 0])
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    try:
        for i in range(n):
            _set_light(model, scenes.light[i])
            _set_object(model, 1, types[scenes.shape[i]], scenes.size[i, 0], centres[i], scenes.yaw[i],
                        scenes.color[i])
            for k in range(slots - 1):
                _set_object(
                    model, 2 + k, types[scenes.clutter_shape[i, k]], scenes.clutter_size[i, k],
                    scenes.clutter_floor[i, k], scenes.clutter_yaw[i, k], scenes.clutter_color[i, k],
                )
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera="eye")
            images[i] = renderer.render()
            if progress is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == n):
                progress(i + 1, n)
    finally:
        renderer.close()
    return images


def _geom_type(mujoco: ModuleType, shape: str) -> int:
    names = {"sphere": "mjGEOM_SPHERE", "cylinder": "mjGEOM_CYLINDER", "cube": "mjGEOM_BOX"}
    return int(getattr(mujoco.mjtGeom, names[shape]))


def _set_light(model: Any, light: np.ndarray) -> None:
    """``(azimuth, elevation, intensity)`` fractions -> the sun's direction, position and strength."""
    azimuth, elevation = 2 * math.pi * float(light[0]), math.pi / 2 * float(light[1])
    direction = -np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    model.light_dir[0] = direction
    model.light_pos[0] = -LIGHT_DISTANCE * direction
    model.light_diffuse[0] = float(light[2])


def _set_object(
    model: Any, geom: int, kind: int, radius: float, centre: np.ndarray, yaw: float, color: int
) -> None:
    """One slot: a sphere of ``radius``, an upright cylinder as tall as wide, or a cube of half-side ``radius``."""
    model.geom_type[geom] = kind
    model.geom_size[geom] = radius
    model.geom_rbound[geom] = radius * math.sqrt(3)
    model.geom_pos[geom] = centre
    model.geom_quat[geom] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    model.geom_rgba[geom, :3] = PALETTE[color]
