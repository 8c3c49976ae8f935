#!/usr/bin/env bash
# The whole GPU run of issue 15 in one command: install the carried wheels, run pipeline_speed, keep the table.
#   benchmarks/device.sh OUTDIR [--full|--smoke] [speed|memory|all]
# (default --full speed; --smoke runs on a CPU in ~2 minutes). `memory` runs memory_budget.py instead (issue 26:
# the --max-vram 12G and 8G plans, measured max_memory_allocated per stage next to the prediction, s/image;
# about 5 minutes on an H100, so run it as its own call); `all` runs both.
# Wheels: every .whl in the repository's .whl/ folder (diffusers is missing on the GPU machine; see
# benchmarks/README.md for the one command that prepares them). Writes OUTDIR/pipeline_speed_<size>.{json,md}
# and OUTDIR/pipeline_speed_<size>.log (and OUTDIR/uncertainty_cost.{json,md,log}: --samples 1/2/4); prints the
# speed table last.
set -euo pipefail
out=${1:?usage: benchmarks/device.sh OUTDIR [--full|--smoke]}
size=${2:---full}
what=${3:-speed}
case "$size" in --full|--smoke) ;; *) echo "device.sh: size must be --full or --smoke, got $size" >&2; exit 2;; esac
case "$what" in speed|memory|all) ;; *) echo "device.sh: what must be speed, memory or all, got $what" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
shopt -s nullglob
wheels=("$root"/.whl/*.whl)
if ((${#wheels[@]})); then
  site=${RSVL_WHEEL_SITE:-/tmp/rsvl-site}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || { echo "device.sh: a package is missing; carry its wheel in .whl/ (benchmarks/README.md)" >&2; exit 3; }
import diffusers, torch, transformers, rsvl_core.pipeline  # noqa: F401
print(f"torch {torch.__version__}, transformers {transformers.__version__}, diffusers {diffusers.__version__}, "
      f"cuda {torch.cuda.is_available() and torch.cuda.get_device_name(0)}")
PY
# the cost of --samples N (N = 1, 2, 4; tiny models), before the speed table so that table is printed last
if [[ $what != memory ]]; then
  if [[ $size == --full ]]; then cost=(--device cuda --repeat 3 --size 96); else cost=(--device cpu --repeat 1 --size 24); fi
  python3 "$root/benchmarks/uncertainty_cost.py" "${cost[@]}" --out "$out" 2>&1 | tee "$out/uncertainty_cost.log"
  # stage 1 with upscale models (issue 33): fp32 / fp16 / bf16, NCHW / channels-last forward times on the GPU
  if [[ $size == --full ]]; then s1=(--device cuda --size 512); else s1=(--smoke --threads 1); fi
  python3 "$root/benchmarks/stage1_models.py" "${s1[@]}" --out "$out" 2>&1 | tee "$out/stage1_models.log"
  name=pipeline_speed_${size#--}
  python3 "$root/benchmarks/pipeline_speed.py" "$size" --out "$out" 2>&1 | tee "$out/$name.log"
fi
if [[ $what != speed ]]; then
  name=memory_budget_${size#--}
  python3 "$root/benchmarks/memory_budget.py" "$size" --out "$out" 2>&1 | tee "$out/$name.log"
fi
