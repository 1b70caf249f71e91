#!/bin/bash
# One GPU check for issue 8, in one call: every method end to end on CUDA (smoke protocol),
# then the speed tables of WRN-28-10 and ResNet-20 on CUDA.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: $OUT, else a temporary folder
#
# Needs a CUDA build of torch and tta's dependencies for $PYTHON (default python3; the repo goes on
# PYTHONPATH, so no install is needed).
# Writes smoke_cuda.sqlite, wrn28_10_cuda.md/.log and resnet20_cuda.md/.log to OUT_DIR.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$out"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi -L
"$python" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
for method in source bn_adapt adabn alpha_bn tent core; do
  "$python" -m tta.run --method "$method" --protocol smoke --device cuda --store "$out/smoke_cuda.sqlite" --force 2>&1 | tail -2
done
echo "smoke on cuda: $(( $(date +%s) - start )) s"
for model in wrn28_10 resnet20; do
  "$python" "$repo/benchmarks/bench_speed.py" --model "$model" --device cuda --repeats 5 \
    > "$out/${model}_cuda.md" 2> "$out/${model}_cuda.log"
  cat "$out/${model}_cuda.md"; tail -2 "$out/${model}_cuda.log"
  echo "$model on cuda: $(( $(date +%s) - start )) s"
done
echo "results in $out"
