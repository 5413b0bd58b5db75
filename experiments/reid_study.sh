#!/usr/bin/env bash
# Why does (or doesn't) augmentation help at 20% of the data? Run after `bash scripts/demo.sh` (it reuses the
# demo's synthetic set and low-data subsets): two views per image with the identity-consistency filter (ratio
# and filter), and one canonical-pose view per image (policy), each against the same baseline, seeds 0/1/2.
# Results: $OUT/reid_views2/results.md and (CANONICAL=1) $OUT/reid_canonical/results.md. Resumable.
# STUDY=controls runs the comparison against the equal-step controls instead (results under $OUT/controls).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
DEMO=${DEMO:-demo_out}
OUT=${OUT:-$DEMO/study}
# STUDY=levers: the converged protocol on seeds 3 and 4 (4 views against the controls; stage 2 only, canonical
# poses and the identity-consistency filter against those controls) and at 40% on seeds 0 and 1
# (docs/experiments.md, "Levers"). Results: $OUT/levers/*/results.md and the table of reid_levers.py.
if [ "${STUDY:-views}" = levers ]; then
  S=$OUT/levers
  cv=(converge=true max_steps=1000 eval_every=50 patience=2 plateau_drops=1 views_per_image=4)
  all="[baseline,augmented,baseline_steps,duplicated]"
  pcdms-aug reid-experiment tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[0.2,0.4]" \
    "seeds=[0,1,2,3,4]" out_dir="$S/splitsrc" --splits-only
  gen() {  # name fraction seed extra-args
    local name=$1 f=$2 seed=$3; shift 3
    pcdms-aug generate --config tiny/generate.yaml --dataset "$DEMO/data" --weights tiny --views 4 --seed "$seed" \
      --split "$S/splitsrc/splits/split_f${f}_s$seed.json" --batch 16 --out "$S/gen/${name}_f${f}_s$seed" "$@"
  }
  for seed in 3 4; do
    gen v4 0.2 $seed; gen s2only 0.2 $seed --stages prior,inpaint; gen canon 0.2 $seed --policy canonical
    gen filt 0.2 $seed --filter-model train --filter-top 0.5
  done
  for seed in 0 1; do gen v4 0.4 $seed; done
  exp() {  # name fraction seeds variants
    pcdms-aug reid-experiment tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[$2]" "seeds=[$3]" \
      "variants=$4" "generated_dir=$S/gen/$1_f$2_s{seed}" out_dir="$S/$1_f$2" "${cv[@]}"
  }
  exp v4 0.2 3,4 "$all"; exp s2only 0.2 3,4 "[augmented]"; exp canon 0.2 3,4 "[augmented]"
  exp filt 0.2 3,4 "[filtered]"; exp v4 0.4 0,1 "$all"
  python experiments/reid_levers.py "$S/v4_f0.2/results.csv" "stage 2 only=$S/s2only_f0.2/results.csv" \
    "canonical poses=$S/canon_f0.2/results.csv" "filter, top 50 %=$S/filt_f0.2/results.csv"
  exit 0
fi
# STUDY=stage2: stage 2's views (the tiny default) against all three controls, converged, at 20% on the seeds
# SEEDS (default 0,1,2) and at 40% on SEEDS40 (default 0,1; empty: none) (docs/experiments.md, "Stage 2's views
# on more seeds"). SHARE=0.5: the same with generated_share=0.5 (half of each batch generated, instead of the
# 80 % that 4 views per image give). Results: $OUT/stage2/s2[_share<SHARE>]_f<fraction>/results.md.
if [ "${STUDY:-views}" = stage2 ]; then
  S=$OUT/stage2 seeds20=${SEEDS:-0,1,2} seeds40=${SEEDS40-0,1} share=${SHARE:-}
  cv=(converge=true max_steps=1000 eval_every=50 patience=2 plateau_drops=1 views_per_image=4
      ${share:+generated_share=$share})
  runs=$(for s in ${seeds20//,/ }; do echo "0.2:$s"; done; for s in ${seeds40//,/ }; do echo "0.4:$s"; done)
  pcdms-aug reid-experiment tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[0.2,0.4]" \
    "seeds=[$seeds20${seeds40:+,$seeds40}]" out_dir="$S/splitsrc" --splits-only
  for fs in $runs; do
    f=${fs%:*} seed=${fs#*:}
    pcdms-aug generate --config tiny/generate.yaml --dataset "$DEMO/data" --weights tiny --views 4 --seed "$seed" \
      --split "$S/splitsrc/splits/split_f${f}_s$seed.json" --batch 16 --out "$S/gen/s2_f${f}_s$seed"
  done
  for fs in "0.2:$seeds20" "0.4:$seeds40"; do
    f=${fs%:*} seeds=${fs#*:}
    [ -n "$seeds" ] || continue
    pcdms-aug reid-experiment tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[$f]" "seeds=[$seeds]" \
      "variants=[baseline,augmented,baseline_steps,duplicated]" "generated_dir=$S/gen/s2_f${f}_s{seed}" \
      out_dir="$S/s2${share:+_share$share}_f$f" "${cv[@]}"
  done
  exit 0
fi
# STUDY=unseen: people the generator never saw. Draws the synthetic world of seed WORLD (default 7; the shipped
# tiny weights were trained on the world of seed 0) into $OUT/unseen/W, then at each fraction of FRACTIONS
# (default 0.1,0.2) and seed of SEEDS (default 21-25): 4 stage-2 views per image and the converged protocol with
# the cap raised to CAP steps (default 3000) and PATIENCE evaluations without a new best before the learning-rate
# drop and the stop (default 4; with 2 the real-only baseline stopped under-trained: docs/experiments.md, "People
# the generator never saw") against the controls of VARIANTS (default all three). Results:
# $OUT/unseen/cv_p<patience>_f<fraction>/results.md and paired.csv. Needs no demo.
# Another generator: WEIGHTS (a pipeline folder), GEN_TRAINED_ON (the dataset folder it trained on, for the
# report's "what the generator saw") and TAG (its views and results go to gen/TAG_* and TAG_cv_*; the controls
# are rerun there, as they replay the augmented run's steps). EXTRA: more reid-experiment keys. A lever of how the
# same views are used (EXTRA="generated_share=0.5"): RUN_TAG names its results (RUN_TAG_cv_*); they take the
# finished baseline runs of cv_p<patience>_f<fraction> (reuse_from: real images only, so such a lever leaves them
# as they were; reid-experiment takes only runs of the same settings and subset).
if [ "${STUDY:-views}" = unseen ]; then
  S=$OUT/unseen W=$OUT/unseen/W fractions=${FRACTIONS:-0.1,0.2} seeds=${SEEDS:-21,22,23,24,25}
  weights=${WEIGHTS:-tiny} tag=${TAG:-}
  patience=${PATIENCE:-4} variants=${VARIANTS:-baseline,augmented,baseline_steps,duplicated}
  views=${tag:-s2} base=cv_p$patience results=${RUN_TAG:+${RUN_TAG}_}${tag:+${tag}_}cv_p$patience
  pcdms-aug synth-market "$W" --train-ids 60 --test-ids 60 --seed "${WORLD:-7}" --quiet
  pcdms-aug reid-experiment tiny/reid.yaml root="$W" dataset=synthetic "fractions=[$fractions]" "seeds=[$seeds]" \
    out_dir="$S/splitsrc" --splits-only
  for f in ${fractions//,/ }; do
    for seed in ${seeds//,/ }; do
      pcdms-aug generate --config tiny/generate.yaml --dataset "$W" --weights "$weights" --views 4 --seed "$seed" \
        --split "$S/splitsrc/splits/split_f${f}_s$seed.json" --batch 16 --out "$S/gen/${views}_f${f}_s$seed"
    done
    reuse=()
    if [ -n "${RUN_TAG:-}" ] && [ -d "$S/${base}_f$f/runs" ]; then reuse=("reuse_from=[$S/${base}_f$f]"); fi
    # shellcheck disable=SC2086
    pcdms-aug reid-experiment tiny/reid.yaml root="$W" dataset=synthetic "fractions=[$f]" "seeds=[$seeds]" \
      "variants=[$variants]" "generated_dir=$S/gen/${views}_f${f}_s{seed}" \
      out_dir="$S/${results}_f$f" converge=true max_steps="${CAP:-3000}" eval_every=50 patience="$patience" plateau_drops=1 \
      views_per_image=4 ${GEN_TRAINED_ON:+generator_trained_on="$GEN_TRAINED_ON"} "${reuse[@]}" ${EXTRA:-}
  done
  exit 0
fi
if [ "${STUDY:-views}" = controls ]; then
  # Against the controls (docs/experiments.md, "Re-ID controls"): 4 random-pose views per kept image at 20%,
  # then 1/2/4 of them per image, each against baseline, baseline_steps and duplicated; 8 epochs of the
  # augmented run (the controls replay its steps) and converged (validation every 50 steps, at most 1000).
  S=$OUT/controls
  pcdms-aug reid-experiment tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[0.2,0.4]" \
    "seeds=[0,1,2]" out_dir="$S/splitsrc" --splits-only
  for seed in 0 1 2; do
    pcdms-aug generate --config tiny/generate.yaml --dataset "$DEMO/data" --weights tiny --views 4 --seed "$seed" \
      --split "$S/splitsrc/splits/split_f0.2_s$seed.json" --batch 16 --out "$S/gen/v4_f0.2_s$seed"
  done
  run=(tiny/reid.yaml root="$DEMO/data" dataset=synthetic "fractions=[0.2]" "seeds=[0,1,2]"
       "variants=[baseline,augmented,baseline_steps,duplicated]" "generated_dir=$S/gen/v4_f0.2_s{seed}")
  for v in 1 2 4; do
    pcdms-aug reid-experiment "${run[@]}" views_per_image=$v out_dir="$S/ep_v$v"
  done
  for v in 2 4; do
    pcdms-aug reid-experiment "${run[@]}" views_per_image=$v out_dir="$S/cv_v$v" converge=true max_steps=1000 \
      eval_every=50 patience=2 plateau_drops=1
  done
  exit 0
fi
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
