#!/usr/bin/env bash
# Reproduce the shipped tiny weights (pcdms_aug/weights/tiny) on this CPU:
# synthetic Market-1501 -> stage 1 and stage 2 (in parallel, one thread each) -> stage-2 outputs on training
# pairs -> stage 3 -> one pipeline folder. Every step resumes where it stopped when run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
DATA=${DATA:-data/synthetic}
RUNS=${RUNS:-runs/tiny}
# One OpenMP thread per process: two trainings share the two cores without spinning against each other.
export OMP_NUM_THREADS=1
mkdir -p "$RUNS"
pcdms-aug synth-market "$DATA"
common=(data.root="$DATA" data.annotations="$DATA/market-annotation-train.csv")
pcdms-aug train tiny/train_prior.yaml "${common[@]}" train.out="$RUNS/prior" > "$RUNS/prior.log" 2>&1 &
prior_pid=$!
pcdms-aug train tiny/train_inpaint.yaml "${common[@]}" train.out="$RUNS/inpaint" > "$RUNS/inpaint.log" 2>&1
wait "$prior_pid"
python - "$RUNS" <<'PY'
import sys
from pcdms_aug.pipeline import PCDMsPipeline
runs = sys.argv[1]
PCDMsPipeline.from_stages({"prior": f"{runs}/prior/final", "inpaint": f"{runs}/inpaint/final"}).save_pretrained(f"{runs}/stage12")
PY
pcdms-aug make-refine-inputs --dataset "$DATA" --annotations "$DATA/market-annotation-train.csv" \
  --weights "$RUNS/stage12" --out "$RUNS/refine_inputs" --max-pairs 800 --steps 10 --guidance 1.0 > "$RUNS/refine_inputs.log" 2>&1
pcdms-aug train tiny/train_refine.yaml "${common[@]}" data.refine_inputs="$RUNS/refine_inputs" \
  train.out="$RUNS/refine" > "$RUNS/refine.log" 2>&1
python - "$RUNS" <<'PY'
import sys
from pcdms_aug.pipeline import PCDMsPipeline, WEIGHTS_ROOT
runs = sys.argv[1]
stages = {n: f"{runs}/{n}/final" for n in ("prior", "inpaint", "refine")}
import torch
# Trained components in fp16 keep the shipped files under 25 MB; frozen random encoders stay fp32.
PCDMsPipeline.from_stages(stages).save_pretrained(WEIGHTS_ROOT / "tiny", trainable_dtype=torch.float16)
print("wrote", WEIGHTS_ROOT / "tiny")
PY
