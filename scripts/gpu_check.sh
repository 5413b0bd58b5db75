#!/usr/bin/env bash
# The GPU path in one command, one JSON (OUT/gpu_check.json): bench, training of each stage, DDP over nccl,
# resume, export, assemble, one image. No network. Arguments are pcdms_aug.perf.gpu_check's:
#   scripts/gpu_check.sh --out runs/gpu_check --fixture                          # random-weight paper folders
#   scripts/gpu_check.sh --out runs/gpu_check --sd21 W/stable-diffusion-2-1-base --clip W/CLIP-ViT-H-14 \
#       --dinov2 W/dinov2-giant --kandinsky W/kandinsky-2-2-prior               # downloaded folders
#   scripts/gpu_check.sh --out runs/gpu_check --cpu --reduced                    # CPU, gloo, reduced depth
set -euo pipefail
# torchrun with one process: the process group and DDP of a multi-GPU run (nccl on a GPU, gloo on --cpu)
exec torchrun --standalone --nproc_per_node 1 -m pcdms_aug.perf.gpu_check "$@"
