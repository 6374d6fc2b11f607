#!/usr/bin/env bash
# The README gallery: composition grids sampled from the shipped registry (registry.db), seeded.
# Usage: scripts/gallery.sh [REGISTRY_PATH] [OUT_DIR]   (defaults: registry.db, docs/gallery)
set -euo pipefail
cd "$(dirname "$0")/.."
registry=${1:-registry.db}
out=${2:-docs/gallery}
concept=${CONCEPT:-.venv/bin/concept}
mkdir -p "$out"
while IFS=';' read -r name expression; do
  "$concept" --registry "$registry" compose "$expression" -n 16 --seed 0 -o "$out/$name.png"
done <<'LIST'
position;position=(0.3,0.7)
color;color=red
shape;shape=triangle
position-and-color;position=(0.7,0.3) & color=blue
position-not-color;position=(0.5,0.5) & !color=red
position-or-position;position=(0.25,0.25) | position=(0.75,0.75)
position-shape-color;position=(0.3,0.3) & shape=square & color=green
shape-color-size;shape=circle & color=yellow & size=0.15
LIST
echo "wrote $out"
