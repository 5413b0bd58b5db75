#!/usr/bin/env bash
# Why does (or doesn't) augmentation help at 20% of the data? Run after `bash scripts/demo.sh` (it reuses the
# demo's synthetic set and low-data subsets): two views per image with the identity-consistency filter (ratio
# and filter), and one canonical-pose view per image (policy), each against the same baseline, seeds 0/1/2.
# Results: $OUT/reid_views2/results.md and (CANONICAL=1) $OUT/reid_canonical/results.md. Resumable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
DEMO=${DEMO:-demo_out}
OUT=${OUT:-$DEMO/study}
for seed in 0 1 2; do
  split="$DEMO/reid/splits/split_f0.2_s$seed.json"
  pcdms-aug generate --config tiny/generate.yaml --dataset "$DEMO/data" --weights tiny --split "$split" \
    --views 2 --steps 10 --seed "$seed" --batch 16 --filter-model train --out "$OUT/views2_s$seed"
done
common=(root="$DEMO/data" dataset=synthetic "fractions=[0.2]" "seeds=[0,1,2]" epochs=8)
pcdms-aug reid-experiment tiny/reid.yaml "${common[@]}" out_dir="$OUT/reid_views2" \
  "generated_dir=$OUT/views2_s{seed}" "variants=[baseline,augmented,filtered]"
[ "${CANONICAL:-0}" = 1 ] || exit 0
for seed in 0 1 2; do
  split="$DEMO/reid/splits/split_f0.2_s$seed.json"
  pcdms-aug generate --config tiny/generate.yaml --dataset "$DEMO/data" --weights tiny --split "$split" \
    --views 1 --policy canonical --steps 10 --seed "$seed" --batch 16 --out "$OUT/canonical_s$seed"
done
pcdms-aug reid-experiment tiny/reid.yaml "${common[@]}" out_dir="$OUT/reid_canonical" \
  "generated_dir=$OUT/canonical_s{seed}" "variants=[baseline,augmented]"
