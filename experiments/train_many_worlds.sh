#!/usr/bin/env bash
# A lever of docs/experiments.md, "People the generator never saw": a tiny generator that has seen many more
# people. Draws one synthetic world of TRAIN_IDS (default 600) training identities with seed WORLD (default 100;
# the shipped tiny weights saw the 60 of seed 0, the unseen-world study evaluates seeds 7 and 11), fine-tunes
# stages 1 and 2 of the tiny weights on it for STEPS steps each (default 3000; in parallel, one thread each, or
# one after the other with PARALLEL=0) and assembles them with the tiny stage 3 into $OUT/weights. Resumable:
# `train` continues from its checkpoints.
# Then the study with these views, their generator stated:
#   WEIGHTS=$OUT/weights GEN_TRAINED_ON=$OUT/W TAG=many OUT=S STUDY=unseen bash experiments/reid_study.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
OUT=${OUT:-runs/many_worlds}
W=$OUT/W
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
pcdms-aug synth-market "$W" --train-ids "${TRAIN_IDS:-600}" --test-ids 60 --seed "${WORLD:-100}" --quiet
common=(data.root="$W" data.annotations="$W/market-annotation-train.csv" train.init_from=tiny
        train.max_steps="${STEPS:-3000}" train.sample_every=0)
if [ "${PARALLEL:-1}" = 1 ]; then
  pcdms-aug train tiny/train_prior.yaml "${common[@]}" train.out="$OUT/prior" > "$OUT/prior.log" 2>&1 &
  prior_pid=$!
else  # PARALLEL=0: one core
  pcdms-aug train tiny/train_prior.yaml "${common[@]}" train.out="$OUT/prior" > "$OUT/prior.log" 2>&1
fi
pcdms-aug train tiny/train_inpaint.yaml "${common[@]}" train.out="$OUT/inpaint" > "$OUT/inpaint.log" 2>&1
[ -z "${prior_pid:-}" ] || wait "$prior_pid"
[ -d "$OUT/weights" ] || pcdms-aug assemble --prior "$OUT/prior/final" --inpaint "$OUT/inpaint/final" \
  --refine tiny --dtype fp16 --out "$OUT/weights"
echo "wrote $OUT/weights"
