#!/usr/bin/env bash
# Multi-object composition (paper Fig. 6): a position concept learned on MuJoCo scenes with one green cube
# among clutter, then two positions ANDed. Writes docs/gallery/fig6-one-cube.png and fig6-two-cubes.png.
# Usage: scripts/fig6.sh [REGISTRY_PATH]   (default: a fresh temporary registry; about 12 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
concept=${CONCEPT:-.venv/bin/concept}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
registry=${1:-$work/fig6.db}
out=docs/gallery
mkdir -p "$out"
export MUJOCO_GL=${MUJOCO_GL:-egl}
"$concept" --registry "$registry" add cube --attribute position --source mujoco \
  --param variant=cube --param image_size=32 --param n=5000 --seed 0 \
  --description "the green cube's position among clutter (paper Fig. 6)"
"$concept" --registry "$registry" compose "cube=(0.3,0.6)" -n 16 --seed 0 -o "$out/fig6-one-cube.png"
"$concept" --registry "$registry" compose "cube=(0.3,0.6) & cube=(0.7,0.4)" -n 16 --seed 0 \
  -o "$out/fig6-two-cubes.png"
echo "wrote $out/fig6-one-cube.png and $out/fig6-two-cubes.png"
