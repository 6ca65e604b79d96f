#!/usr/bin/env bash
# The GPU checks of issue 10 as one prepared command, for a session lent a GPU machine
# (H100/H200, the 'cuda' image: Python 3.12, jax 0.11.2; nothing can be fetched there).
#
# Here first (with network):   PYTHONPATH=src python bench/device_wheels.py
# Then with the device tool:    command "bash bench/gpu_check.sh", carry [".whl"], timeout 600
#
# 1. installs the carried wheels (haliax, draccus, jmp, ...) into /tmp/site
# 2. lists the devices
# 3. tests/gpu: bf16 attention (nvte = cuDNN, jax_flash) against float32 vanilla, values and
#    gradients
# 4. builds the benchmark token cache in-process (no Ray there), then bench/train.py on
#    bench/configs/llama_1b_gpu.yaml (Llama 1.0B, seq 2048, batch 16, bf16 compute) once per
#    attention backend: step time, tokens/s, MFU against the card's bf16 peak, peak memory
#
# Logs and JSON go to $OUT (the device tool brings them back), or elsewhere to a new
# mktemp -d folder, whose path is printed first.
# STEPS, BACKENDS, CONFIG and JAX_PLATFORMS override the defaults (a CPU dry run of the
# script: JAX_PLATFORMS=cpu CONFIG=bench/configs/gpt2_256.yaml BACKENDS=jax_flash STEPS=8,
# with a python3 that has lm's dependencies other than the carried wheels, and the wheels
# downloaded for that python3's version: device_wheels.py --python-version 3.11, say).
# FP8=1 runs each backend with fp8 matmuls instead (trainer.quantization.fp8; H100 and later):
# a second call such as `BACKENDS=nvte FP8=1 bash bench/gpu_check.sh` after the first.
# Each stage has its own time limit (120 + 100 + 2 x 170 s: the whole script ends inside the
# device tool's 600 s per call even if every stage hits its limit), so one that hangs still
# leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUT:-}" ]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 1
fi
mkdir -p "$OUT" || exit 1
echo "logs and JSON: $OUT"
STEPS=${STEPS:-20}
BACKENDS=${BACKENDS:-"jax_flash nvte"}
CONFIG=${CONFIG:-bench/configs/llama_1b_gpu.yaml}
NAME=$(basename "$CONFIG" .yaml)

shopt -s nullglob
WHEELS=(.whl/*.whl)
shopt -u nullglob
if [ ${#WHEELS[@]} = 0 ]; then
    echo "no wheels in .whl/: run bench/device_wheels.py first (and carry .whl)"; exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS[@]}" \
    || { echo "pip could not install the wheels in .whl/ (its error is above)"; exit 1; }
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}

python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/devices.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -15

CACHE=/tmp/lm-bench-cache
timeout 100 python3 -m lm.main.cache_dataset --config_path "$CONFIG" \
    --data.cache_dir "$CACHE" --data.cache_options.backend local > "$OUT/cache.log" 2>&1 \
    || { echo "cache build failed:"; tail -20 "$OUT/cache.log"; }

QUANT=()
SUFFIX=""
if [ "${FP8:-0}" = 1 ]; then QUANT=(--trainer.quantization "{fp8: true}"); SUFFIX=_fp8; fi
for backend in $BACKENDS; do
    RUN="${NAME}_$backend$SUFFIX"
    echo "== $NAME, attn_backend $backend${SUFFIX:+, fp8}"
    timeout 170 python3 bench/train.py --config "$CONFIG" --steps "$STEPS" --warmup 5 \
        --cache-dir "$CACHE" --json "$OUT/$RUN.json" \
        -- --model.attn_backend "$backend" "${QUANT[@]}" > "$OUT/$RUN.log" 2>&1
    tail -3 "$OUT/$RUN.log"
done
