#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, section 5, in phases that each fit one device call:
#   eager    (~4 min): the published step (ViT-B/16, T 16, S 4, 224 px, batch 8) in bf16 and fp16, training
#                      and evaluation; the CUDA tests that the CPU skips.
#   compiled (~8 min): the same with torch.compile, without and with CUDA graphs (TRAIN.COMPILE_MODE
#                      reduce-overhead), with the top operators of the training step.
#   cpu      (~1 min): the CPU comparison on this machine's processor, where it has native bf16.
# Usage, from the repository root: bash scripts/device_checks.sh [eager|compiled|cpu|all]; logs and JSON go
# to $OUT (default device_out/).
set -uo pipefail
PHASE=${1:-all}
OUT=${OUT:-device_out}
mkdir -p "$OUT"
LOG="$OUT/device.log"
export PYTHONUNBUFFERED=1
section() { echo "=== $* ($(date -u +%FT%TZ))" | tee -a "$LOG"; }
# run LIMIT_SECONDS COMMAND...: one check into the log; a failure does not stop the others
run() { local limit=$1; shift; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }

section machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
MODEL=(python3 -m scripts.benchmark model --preset vit-b16 --peak-tflops bf16=989 fp16=989 --steps 10)

if [[ $PHASE == eager || $PHASE == all ]]; then
    section "published step, eager"
    run 200 "${MODEL[@]}" --precision bf16 fp16 --json "$OUT/eager.json"
    section "CUDA tests"
    run 200 python3 -m pytest -q -p no:cacheprovider -m "not slow" -k "cuda" tests/
fi
if [[ $PHASE == compiled || $PHASE == all ]]; then
    section "published step, torch.compile (default mode, then CUDA graphs)"
    run 240 "${MODEL[@]}" --precision bf16 --compile on --json "$OUT/compiled.json"
    run 240 "${MODEL[@]}" --precision bf16 --compile on --opts TRAIN.COMPILE_MODE reduce-overhead \
        --json "$OUT/cuda_graphs.json"
    section "training step profile, compiled"
    run 150 python3 -m scripts.benchmark train --preset vit-b16 --precision bf16 --compile on --steps 3 --profile 25
fi
if [[ $PHASE == cpu || $PHASE == all ]]; then
    section "CPU comparison, ViT-B/16 widths at 224 px, one thread"
    if grep -q -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
        run 150 python3 -m scripts.benchmark reference --preset cpu-224 --steps 3 --warmup 1 --threads 1 \
            --json "$OUT/cpu_reference.json"
    else
        echo "no native bf16 on this CPU: skipped" | tee -a "$LOG"
    fi
fi
section done
