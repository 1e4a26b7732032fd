#!/usr/bin/env bash
# The GPU, measured in one call: on a machine with CUDA, an environment with the gpu extra
# (faiss-gpu instead of faiss-cpu), then each figure beside the CPU's from the same run:
#   - tagging 1,000 clips end to end (bench/tag.py, the game-music clips repeated),
#   - training one CNN epoch and embedding (bench/train.py),
#   - FAISS indexes of 1M tracks and 16,000 artists, built and searched (bench/similar.py), when
#     faiss there has GPU support,
#   - the tests marked gpu (CUDA and faiss-GPU paths against the CPU's).
# Each step's log lands in $OUT (default ./gpu-figures), its last line the step's JSON figures.
# A step that fails or runs past STEP_TIMEOUT seconds (default 300) is reported and the next runs.
#
# A machine without a package index (a lent GPU machine often has none) runs with AGF_WHEELS: a
# folder of wheels for what its python lacks. They go into a private folder, and the python
# there keeps its own torch, a CUDA build.
#
# Usage: bash bench/gpu.sh [--check]
#   --check: only what runs without a GPU (CI runs it): the script's syntax, the benchmarks'
#            --json output on small inputs, and that it says plainly when there is no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-figures}
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--check" ]]; then
  "$PY" -c 'import json, subprocess, sys
for cmd in (["bench/serve.py", "--artists", "300", "--queries", "20", "--json"],):
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, check=True).stdout
    json.loads(out.strip().splitlines()[-1])
print("gpu.sh --check: the benchmarks speak JSON")'
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh --check: no CUDA device here: the GPU figures need a machine with one"
  fi
  exit 0
fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  echo "no CUDA device: bench/gpu.sh measures the GPU, and there is none here" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "$OUT"

if [[ -n "${AGF_WHEELS:-}" ]]; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$AGF_WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD"
else  # a fresh environment: torch as the machine provides it (CUDA), then agf with faiss-gpu
  "$PY" -m venv .venv-gpu
  . .venv-gpu/bin/activate
  PY=python
  pip install -q --upgrade pip
  pip install -q torch==2.13.0 || pip install -q torch
  pip install -q -e '.[test]'
  pip uninstall -q -y faiss-cpu
  pip install -q -e '.[gpu]'
fi
"$PY" -c 'import torch, faiss; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "faiss", faiss.__version__, "gpus", faiss.get_num_gpus())' | tee "$OUT/env.txt"
{ echo "cpus $(nproc): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"; lscpu 2>/dev/null | grep -E '^(Thread|Core|Socket)'; } | tee -a "$OUT/env.txt"

step() {  # step NAME COMMAND...: its output in $OUT/NAME.txt; a failure is reported, not fatal
  local name=$1
  shift
  echo "== $name: $*"
  if ! timeout "${STEP_TIMEOUT:-300}" "$@" 2>&1 | tee "$OUT/$name.txt"; then
    echo "== $name FAILED or timed out: see $OUT/$name.txt"
  fi
}

GAME=${AGF_GAME_MUSIC:-../shared/data/game-music}
CLIPS=$(mktemp -d)
i=0
while [ "$i" -lt 1000 ]; do  # 1,000 files: the clips repeated under new names (distinct bytes: a tag suffix)
  before=$i
  for f in "$GAME"/clips/*/*.mp3 "$GAME"/clips/*.mp3; do
    [ -f "$f" ] || continue
    [ "$i" -ge 1000 ] && break
    { cat "$f"; printf 'agf-gpu-%06d' "$i"; } > "$CLIPS/clip-$i.mp3"
    i=$((i + 1))
  done
  if [ "$i" -eq "$before" ]; then  # a pass that found no clip would loop forever
    echo "no MP3 clips under $GAME/clips: set AGF_GAME_MUSIC to the game-music folder" >&2
    exit 1
  fi
done

step tag env AGF_TAG_FOLDER="$CLIPS" "$PY" bench/tag.py --files 1000 --baseline-files 16 --json
step train "$PY" bench/train.py --tracks 400 --json
if "$PY" -c 'import sys, faiss; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)'; then
  step similar-cpu env AGF_FAISS_CPU=1 "$PY" bench/similar.py --tracks 1000000 --artists 16000 --json
  step similar "$PY" bench/similar.py --tracks 1000000 --artists 16000 --json
else
  echo "faiss here has no GPU support: the FAISS GPU figures are not measured"
fi
step gpu-tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "figures in $OUT/"
