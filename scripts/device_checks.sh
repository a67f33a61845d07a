#!/usr/bin/env bash
# The GPU checks and benchmarks of this project on an H100/H200, in three phases, each of which can run alone:
#   eager:    (about 5 minutes) the training and evaluation step of the published ViT-B/16 setting (T 16,
#             batch 8, 224 px) in bf16, fp16 and fp32, and bf16 with activation checkpointing at batch 32;
#             every row also reports the GPU's busy time per step (host-bound or not); the CUDA tests (16-bit
#             LayerNorm, CUDA vs CPU prediction, CUDA graphs vs eager); main.py on the GPU (fp16
#             autocast with gradient scaling, 2 epochs);
#   compiled: bf16 with torch.compile and CUDA graphs (TRAIN.COMPILE_MODE reduce-overhead), training and
#             evaluation; evaluation at batch 32; the training step compiled without CUDA graphs (with
#             its operator profile); compiling takes minutes per variant, so this phase takes about
#             6 minutes (its rows run most decisive first);
#   cpu:      (about 1 minute) the CPU comparison on the machine's own processor, which unlike this
#             project's CPU machines may have native bf16 (AVX512-BF16 / AMX): our fp32 and bf16-autocast
#             training step against the straightforward reference implementation's fp32 step.
# Logs and JSON go to $OUT (default: device_out/). Usage, from the repository root:
#     bash scripts/device_checks.sh [eager|compiled|cpu|all]      (default: all, about 12 minutes)
# Packages missing on the machine may be carried as wheels in .whl/ (installed into /tmp/site).
set -uo pipefail
PHASE=${1:-all}
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/device.log"
if compgen -G '.whl/*.whl' > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi

section() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
# run LIMIT_SECONDS COMMAND...: one check, its output into the log; a failure does not stop the others
run() { local limit=$1; shift; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }

section machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

BENCH=(python3 -m scripts.benchmark model --preset vit-b16 --peak-tflops bf16=989 fp16=989 fp32=67 --steps 10)
TRAIN=(python3 -m scripts.benchmark train --preset vit-b16 --peak-tflops 989 --steps 10 --precision bf16)

if [[ $PHASE == eager || $PHASE == all ]]; then
    section "benchmark: ViT-B/16, T 16, batch 8, eager"
    run 150 "${BENCH[@]}" --precision bf16 fp16 fp32 --compile off --checkpoint off --json "$OUT/batch8.json"
    section "benchmark: bf16, activation checkpointing, batch 32"
    run 60 "${TRAIN[@]}" --compile off --checkpoint on --opts TRAIN.BATCH_SIZE 32 --json "$OUT/batch32_checkpoint.json"
    section "CUDA tests"
    run 200 python3 -m pytest -q -p no:cacheprovider tests/test_predict.py::test_cuda_matches_cpu \
        tests/test_clip.py::test_16bit_layer_norm_on_cuda_is_fp32_accurate \
        tests/test_compile.py::test_cuda_graphs_train_and_evaluate_like_eager \
        tests/test_benchmark.py::test_host_syncs_are_counted_on_cuda
    section "main.py on the GPU: O1 (fp16 + GradScaler), 2 epochs of a small synthetic set"
    SYN=/tmp/synthetic
    run 90 python3 main.py --config configs/demo.yaml --opts TRAIN.EPOCHS 2 TRAIN.OPT_LEVEL O1 DATA.NUM_WORKERS 4 \
        DATA.ROOT $SYN DATA.TRAIN_FILE $SYN/train.txt DATA.VAL_FILE $SYN/test.txt DATA.LABEL_LIST $SYN/labels.csv \
        DATA.SYNTHETIC.TRAIN_PER_CLASS 40 DATA.SYNTHETIC.TEST_PER_CLASS 10 TEST.REPORT_SHUFFLED False \
        OUTPUT /tmp/demo_gpu
    grep -E 'RESULT|mem ' /tmp/demo_gpu/log_rank0.txt | tail -4 | tee -a "$LOG"
fi

if [[ $PHASE == compiled || $PHASE == all ]]; then
    # the decisive rows first, in case the device time runs out
    section "benchmark: bf16, torch.compile with CUDA graphs, batch 8, training and evaluation"
    run 240 "${BENCH[@]}" --precision bf16 --compile on --opts TRAIN.COMPILE_MODE reduce-overhead \
        --json "$OUT/batch8_cuda_graphs.json"
    section "benchmark: the same evaluation step at 32 videos per step (TEST.BATCH_SIZE 32)"
    run 120 python3 -m scripts.benchmark eval --preset vit-b16 --peak-tflops 989 --steps 10 --precision bf16 \
        --compile on --opts TRAIN.COMPILE_MODE reduce-overhead TEST.BATCH_SIZE 32 \
        --json "$OUT/eval32_cuda_graphs.json"
    section "benchmark: bf16, torch.compile without CUDA graphs, batch 8"
    run 150 "${TRAIN[@]}" --compile on --profile 30 --json "$OUT/batch8_compile.json"
fi
if [[ $PHASE == cpu || $PHASE == all ]]; then
    section "CPU: ours (fp32, bf16 autocast) against the reference's fp32 step, ViT-B/16 widths, 224 px, 1 thread"
    # without native bf16 the bf16 step is emulated (about a minute per step) and the target does not apply
    if grep -q -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
        run 150 python3 -m scripts.benchmark reference --preset cpu-224 --steps 3 --warmup 1 --threads 1 \
            --json "$OUT/cpu_reference.json"
    else
        echo "no native bf16 (amx_bf16, avx512_bf16) on this CPU: skipped" | tee -a "$LOG"
    fi
fi
section done
