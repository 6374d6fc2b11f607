#!/usr/bin/env bash
# Rebuild the shipped registry from scratch with the project's own `concept add`, by the paper's continual
# protocol (Table 2): each stage on its own restricted data, each later concept a residual trained with the
# earlier ones frozen inside its loss. These are benchmarks/continual.py's report-split commands (seed 1),
# so the continual table and Table 1 in README are measured on one registry; `size` is added last.
# Usage: scripts/build_registry.sh [REGISTRY_PATH]   (default: registry.db at the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-registry.db}
concept=${CONCEPT:-.venv/bin/concept}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/registry.db"
common=(--source scenes --device auto --seed 1 --param image_size=32)
# stage 1: position, a denoiser of magenta squares only (the chain's root: the only whole-scene model)
"$concept" --registry "$db" add position "${common[@]}" --param shapes=square --param colors=magenta \
  --description "object centre (x, y) in scene units"
# stage 2: shape on every shape, still magenta only, learning what position's squares do not explain
"$concept" --registry "$db" add shape "${common[@]}" --param colors=magenta --with position \
  --description "circle, square or triangle"
# stage 3: color on every scene, with both earlier concepts frozen
"$concept" --registry "$db" add color "${common[@]}" --with position --with shape --description "object color"
"$concept" --registry "$db" add size "${common[@]}" --with position --with shape --with color \
  --description "object radius as a fraction of the scene"

python3 - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.execute("VACUUM")
db.close()
PY
mv "$db" "$target"
echo "wrote $target"
