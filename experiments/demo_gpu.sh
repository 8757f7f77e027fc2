#!/usr/bin/env bash
# Issue 17, item 2: the demo recipe (experiments/demo.py --profile gpu) on a lent GPU machine, in one command of
# under 10 minutes. Run from the repository root there, with the corpus carried as .carry/pd-english.tar.xz
# (made here by: mkdir -p .carry && tar -C ../shared/data -cJf .carry/pd-english.tar.xz pd-english).
# Extra arguments go to demo.py (a CPU rehearsal: tiny --set sizes, short --minutes). Writes to $OUT: machine.txt, gpu-tests.txt (the CUDA tests of the fused attention), log.txt, and the products
# (stages.json, the three half-precision models, each run's config and metrics) as demo-gpu.tar.part-NN, pieces
# of at most 15 MiB (the device tool returns files of at most 16 MiB). Back here:
#   cat DIR/demo-gpu.tar.part-* | tar -x -C runs/demo-gpu-result
set -u
OUT=${OUT:-runs/demo-gpu-out}
BUDGET=${BUDGET:-540}  # seconds for everything before packing
PY=${PYTHON:-python3}
WORK=runs/demo-gpu
start=$(date +%s)
mkdir -p "$OUT" "$WORK/state"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
tar -C "$WORK" -xJf .carry/pd-english.tar.xz
cp -r experiments/demo_state/tokenizer experiments/demo_state/split.json "$WORK/state/"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
} > "$OUT/machine.txt" 2>&1
train() {  # demo.py with the time left before BUDGET; its extra arguments last
    local left=$((BUDGET - $(date +%s) + start))
    timeout $((left + 30)) $PY experiments/demo.py --profile gpu --pd-english "$WORK/pd-english" --state "$WORK/state" \
        --out "$WORK/runs" --stop-after ar --hours "$($PY -c "print($left / 3600)")" --set "data.cache_dir=$WORK/cache" \
        "$@" 2>&1 | tee -a "$OUT/log.txt"
    local code=${PIPESTATUS[0]}
    echo "demo.py exit $code after $(($(date +%s) - start)) s" | tee -a "$OUT/log.txt"
    return "$code"
}
# model.attn_backend=auto: PyTorch's compiled flex attention on CUDA. Should a phase fail (a kernel that does not
# compile there, say), the rerun retries the failed phase uncompiled with the math backend; finished phases are kept.
if ! train "$@"; then
    train "$@" --set model.attn_backend=math --set train.compile=false
else  # the CUDA tests of the fused attention against float32 math, in the time left
    left=$((BUDGET - $(date +%s) + start))
    if [ "$left" -gt 20 ]; then
        timeout "$left" $PY -m pytest -q -p no:cacheprovider tests/test_dit.py tests/test_ar.py -k gpu \
            > "$OUT/gpu-tests.txt" 2>&1
        echo "CUDA tests exit $? after $(($(date +%s) - start)) s" | tee -a "$OUT/log.txt"
    fi
fi
cp "$OUT/machine.txt" "$WORK/state/machine.txt"
(cd "$WORK" && find state runs -path '*/checkpoints' -prune -o -path 'runs/*/model' -prune -o -path 'runs/corpus' \
    -prune -o -type f -print | tar -cf - -T -) | split -b 15m -d - "$OUT/demo-gpu.tar.part-"
ls -la "$OUT"
