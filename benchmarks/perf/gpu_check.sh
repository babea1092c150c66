#!/usr/bin/env bash
# GPU check of the perf benchmarks: the training step (train_step) and inference speed-ups (inference) on the GPU,
# in a few minutes, tables and JSON into one folder plus a combined perf.md. Runs on the CPU too (slowly) when no
# GPU is present; QUICK=1 (or --quick) runs the tiny smoke sizes.
#
#   bash benchmarks/perf/gpu_check.sh [OUT_DIR] [--quick]
#
# OUT_DIR defaults to $OUT when set, else benchmarks/perf/results-gpu. Works from a fresh checkout: uses
# .venv/bin/python when present, else python3 (installing the project with pip only if it cannot be imported).
set -euo pipefail

caller_dir=$PWD
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

out="" quick=()
[[ ${QUICK:-0} == 1 ]] && quick=(--quick)
for arg in "$@"; do
    case $arg in
        --quick) quick=(--quick) ;;
        -*) echo "gpu_check.sh: unknown option $arg (usage: gpu_check.sh [OUT_DIR] [--quick])" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done
out=${out:-${OUT:-}}
if [[ -z $out ]]; then
    out=$root/benchmarks/perf/results-gpu
elif [[ $out != /* ]]; then
    out=$caller_dir/$out
fi

cd "$root"
if [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
    if ! "$py" -c "import lorita, baselines, benchmarks.models" 2>/dev/null; then
        echo "gpu_check.sh: installing the project with pip (import failed)" >&2
        "$py" -m pip install -q -e .
    fi
fi
mkdir -p "$out"
command -v nvidia-smi >/dev/null && nvidia-smi -L || true

if [[ $("$py" -c "import torch; print(int(torch.cuda.is_available()))") == 1 ]]; then
    device=cuda
else
    device=cpu
    echo "gpu_check.sh: no GPU visible to torch; running on the CPU" >&2
fi
start=$SECONDS
# The GPU's own numbers are the point here: inference on the GPU only (the CPU columns come from `make bench`).
"$py" -m benchmarks.perf.train_step --device "$device" --out "$out" "${quick[@]}"
"$py" -m benchmarks.perf.inference --devices "$device" --out "$out" "${quick[@]}"
"$py" -m benchmarks.perf.all --combine-only --only train_step inference --out "$out"
echo "gpu_check.sh: done in $((SECONDS - start)) s; tables in $out"
