#!/usr/bin/env bash
# Command 1 of 2: install everything into .venv, then run the main job on the default world:
# record a data set from the real env, train a nano world model on it (nano's 10-minute wall-clock budget),
# and evaluate it on freshly recorded episodes against the copy-last-frame baseline; then serve it in the
# browser (`simulacra play`, beside the real env) and print the URL. SIMULACRA_NO_PLAY=1 skips play (CI, scripts).
# WORLD=<preset> EPISODES=<n> bash setup.sh picks another world; re-running resumes a finished or
# interrupted training run instead of starting over.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
WORLD=${WORLD:-breakout}  # the benchmark's best world in the nano budget (benchmarks/world_quality.py)
EPISODES=${EPISODES:-48}
sim=.venv/bin/simulacra
data=datasets/$WORLD
run=runs/$WORLD-nano
if [ ! -f "$data/info.json" ]; then
  $sim record --preset "$WORLD" --episodes "$EPISODES" --out "$data"
fi
$sim data info "$data"
$sim data verify "$data"
$sim data view "$data" --out "$data/preview.mp4"
resume=()
[ -f "$run/config.json" ] && resume=(--resume)
$sim train --data "$data" --size nano --out "$run" "${resume[@]}"
$sim eval --run "$run"
echo "done: data set in $data (preview $data/preview.mp4), world in $run/world, report at $run/eval/report.html"
$sim play "$run"  # prints the URL; Ctrl-C stops it (SIMULACRA_NO_PLAY=1 skips it)
