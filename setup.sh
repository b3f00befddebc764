#!/usr/bin/env bash
# Command 1 of 2: install everything into .venv, then run the main job on the default world:
# record a small data set from the real env, summarise it, verify it and write a preview video.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
WORLD=${WORLD:-breakout}
sim=.venv/bin/simulacra
$sim record --preset "$WORLD" --episodes "${EPISODES:-16}" --overwrite
$sim data info "datasets/$WORLD"
$sim data verify "datasets/$WORLD"
$sim data view "datasets/$WORLD" --out "datasets/$WORLD/preview.mp4"
echo "done: data set in datasets/$WORLD, preview video at datasets/$WORLD/preview.mp4"
