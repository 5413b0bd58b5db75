#!/usr/bin/env bash
# Reproduce the shipped tiny weights (pcdms_aug/weights/tiny) on this CPU, in three phases (each phase continues
# the last rather than starting over, so the whole fits in hours of two shared cores):
#   phase 1: synthetic Market-1501 -> stage 1 and stage 2 (in parallel, one thread each) -> stage-2 outputs on
#            800 training pairs -> stage 3 -> $RUNS/phase1 (fp16)
#   phase 2: stage 1 (+3000 steps) and stage 2 (+3500) warm-started from phase 1 -> stage-2 outputs of phase 1
#            (fixed source-half sampling) on 1600 pairs -> stage 3 (+1000) -> $RUNS2/phase2
#   phase 3: stage-2 outputs of phase 2 on 1600 pairs -> stage 3 (+800) for img2img -> pcdms_aug/weights/tiny
# Every step resumes where it stopped when run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
DATA=${DATA:-data/synthetic}
RUNS=${RUNS:-runs/tiny}
RUNS2=${RUNS2:-runs/tiny2}
# One OpenMP thread per process: two trainings share the two cores without spinning against each other.
export OMP_NUM_THREADS=1
mkdir -p "$RUNS"
pcdms-aug synth-market "$DATA"
common=(data.root="$DATA" data.annotations="$DATA/market-annotation-train.csv")
pcdms-aug train tiny/train_prior.yaml "${common[@]}" train.out="$RUNS/prior" > "$RUNS/prior.log" 2>&1 &
prior_pid=$!
pcdms-aug train tiny/train_inpaint.yaml "${common[@]}" train.out="$RUNS/inpaint" > "$RUNS/inpaint.log" 2>&1
wait "$prior_pid"
pcdms-aug assemble --prior "$RUNS/prior/final" --inpaint "$RUNS/inpaint/final" --out "$RUNS/stage12"
pcdms-aug make-refine-inputs --dataset "$DATA" --annotations "$DATA/market-annotation-train.csv" \
  --weights "$RUNS/stage12" --out "$RUNS/refine_inputs" --max-pairs 800 --steps 10 --guidance 1.0 \
  --scheduler unipc > "$RUNS/refine_inputs.log" 2>&1
pcdms-aug train tiny/train_refine.yaml "${common[@]}" data.refine_inputs="$RUNS/refine_inputs" \
  train.out="$RUNS/refine" > "$RUNS/refine.log" 2>&1
# Trained components in fp16 keep the shipped files small; frozen random encoders stay fp32.
pcdms-aug assemble --prior "$RUNS/prior/final" --inpaint "$RUNS/inpaint/final" --refine "$RUNS/refine/final" \
  --dtype fp16 --out "$RUNS/phase1"

# ------------------------------------------------------------------------------------------ phase 2
mkdir -p "$RUNS2"
warm=(train.init_from="$RUNS/phase1")
pcdms-aug train tiny/train_prior.yaml "${common[@]}" "${warm[@]}" train.out="$RUNS2/prior" train.max_steps=3000 \
  train.sample_every=0 > "$RUNS2/prior.log" 2>&1 &
prior_pid=$!
pcdms-aug make-refine-inputs --dataset "$DATA" --annotations "$DATA/market-annotation-train.csv" \
  --weights "$RUNS/phase1" --out "$RUNS2/refine_inputs" --max-pairs 1600 --steps 10 --guidance 1.0 \
  --scheduler unipc > "$RUNS2/refine_inputs.log" 2>&1
pcdms-aug train tiny/train_refine.yaml "${common[@]}" "${warm[@]}" data.refine_inputs="$RUNS2/refine_inputs" \
  train.out="$RUNS2/refine" train.max_steps=1000 train.sample_every=1000 > "$RUNS2/refine.log" 2>&1 &
refine_pid=$!
pcdms-aug train tiny/train_inpaint.yaml "${common[@]}" "${warm[@]}" train.out="$RUNS2/inpaint" train.max_steps=3500 \
  train.sample_every=1000 > "$RUNS2/inpaint.log" 2>&1
wait "$prior_pid" "$refine_pid"

# ------------------------------------------------------------------------------------------ phase 3
# Stage 3 only, for its img2img use (sampling.refine_strength 0.25, from a noise-free start): stage-2 outputs
# of the phase-2 weights (10 UniPC steps, like phases 1 and 2) on 1600 pairs, then the refiner warm-started from
# phase 2 and trained on the low-noise quarter of the schedule only, where img2img samples it (as SDXL's
# refiner). Prior and inpaint are phase 2's. The shipped pipeline samples with DDIM; stage-3 inputs made with
# DDIM are untried.
RUNS3=${RUNS3:-runs/tiny3}
mkdir -p "$RUNS3"
pcdms-aug assemble --prior "$RUNS2/prior/final" --inpaint "$RUNS2/inpaint/final" --refine "$RUNS2/refine/final" \
  --dtype fp16 --out "$RUNS2/phase2"
pcdms-aug make-refine-inputs --dataset "$DATA" --annotations "$DATA/market-annotation-train.csv" \
  --weights "$RUNS2/phase2" --out "$RUNS3/refine_inputs" --max-pairs 1600 --steps 10 --guidance 1.0 \
  --scheduler unipc > "$RUNS3/refine_inputs.log" 2>&1
pcdms-aug train tiny/train_refine.yaml "${common[@]}" train.init_from="$RUNS2/phase2" \
  data.refine_inputs="$RUNS3/refine_inputs" train.out="$RUNS3/refine" train.max_steps=800 \
  train.lr=1e-4 train.warmup_steps=50 train.sample_every=0 "model.train_timesteps=[0, 250]" \
  > "$RUNS3/refine.log" 2>&1
pcdms-aug assemble --prior "$RUNS2/prior/final" --inpaint "$RUNS2/inpaint/final" --refine "$RUNS3/refine/final" \
  --dtype fp16 --out "$RUNS3/final"
TINY=$(python -c "from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT; print(WEIGHTS_ROOT / 'tiny')")
rm -rf "$TINY" && cp -r "$RUNS3/final" "$TINY" && echo "wrote $TINY"
