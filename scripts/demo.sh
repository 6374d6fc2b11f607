#!/usr/bin/env bash
# The main job: load (or, if the registry lacks them, train) position and color, compose them,
# and write a PNG grid plus per-sample PNGs with JSON sidecars under out/.
set -euo pipefail
cd "$(dirname "$0")/.."
concept=${CONCEPT:-.venv/bin/concept}
registry=${CONCEPTLIB_REGISTRY:-registry.db}
have() { [ -f "$registry" ] && "$concept" --registry "$registry" show "$1" >/dev/null 2>&1; }
have position || "$concept" --registry "$registry" add position --source scenes
have color || "$concept" --registry "$registry" add color --source scenes --with position
"$concept" --registry "$registry" list
"$concept" --registry "$registry" compose "position=(0.3,0.7) & color=red" -n 16 --seed 0 \
  -o out/demo.png --out-dir out/demo
echo "demo grid: $(pwd)/out/demo.png"
