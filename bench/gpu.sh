#!/usr/bin/env bash
# The GPU, measured in one call: on a machine with CUDA, a fresh environment with the gpu extra
# (faiss-gpu instead of faiss-cpu), then each figure beside the CPU's from the same run:
#   - training one CNN epoch and embedding (bench/train.py),
#   - tagging 1,000 clips end to end (bench/tag.py, the game-music clips repeated),
#   - FAISS indexes of 1M tracks and 16,000 artists, built and searched (bench/similar.py),
#   - the tests marked gpu (CUDA and faiss-GPU paths against the CPU's).
# Every figure also lands as JSON lines in $OUT (default ./gpu-figures) for the README.
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

# a fresh environment: torch as the machine provides it (CUDA), then agf with faiss-gpu
"$PY" -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0 || pip install -q torch
pip install -q -e '.[test]'
pip uninstall -q -y faiss-cpu
pip install -q -e '.[gpu]'
python -c 'import torch, faiss; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "faiss gpus", faiss.get_num_gpus())'

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

python bench/train.py --tracks 400 --json | tee "$OUT/train.txt" | tail -1 > "$OUT/train.json"
AGF_TAG_FOLDER="$CLIPS" python bench/tag.py --files 1000 --baseline-files 16 --json | tee "$OUT/tag.txt" | tail -1 > "$OUT/tag.json"
AGF_FAISS_CPU=1 python bench/similar.py --tracks 1000000 --artists 16000 --json | tee "$OUT/similar-cpu.txt" | tail -1 > "$OUT/similar-cpu.json"
python bench/similar.py --tracks 1000000 --artists 16000 --json | tee "$OUT/similar.txt" | tail -1 > "$OUT/similar.json"
python -m pytest -q -m gpu tests | tee "$OUT/gpu-tests.txt"
echo "figures in $OUT/"
