#!/usr/bin/env bash
# The checks that need a GPU, in one run: the paper configs' networks (bf16 autocast), a training step of every
# stage through the real loop with peak memory, the same behind DDP on an nccl process group, and restore of
# 10/60/600 s inputs with paper-sized models. Each step writes its JSON to $OUT_DIR and a failing step does
# not stop the others; the exit status says whether all passed.
#
#   bash benchmarks/gpu_checks.sh                     # python3 on PATH, results in out/gpu-checks
#   PY=.venv/bin/python OUT_DIR=/tmp/gpu bash benchmarks/gpu_checks.sh
set -uo pipefail
PY=${PY:-python3}
OUT_DIR=${OUT_DIR:-out/gpu-checks}
STEPS=${STEPS:-6}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME COMMAND...: run, keep stdout as NAME.json and stderr as NAME.log
    local name=$1; shift
    local began=$SECONDS
    if "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log"; then
        echo "ok     $name ($((SECONDS - began)) s)"
    else
        echo "FAILED $name ($((SECONDS - began)) s): $(tail -n 3 "$OUT_DIR/$name.log" | tr '\n' ' ')"
        failed=1
    fi
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" \
    || exit 1
step train_step "$PY" benchmarks/train_step.py --skip-ray --device cuda --config paper --steps "$STEPS"
step train_step_ddp "$PY" benchmarks/train_step.py --skip-ray --device cuda --config paper --steps "$STEPS" --ddp
step restore "$PY" benchmarks/restore.py --config paper --device cuda
step models "$PY" benchmarks/models.py --configs paper --steps 5
exit $failed
