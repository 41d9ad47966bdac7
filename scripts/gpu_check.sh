#!/usr/bin/env bash
# GPU check: MPD and OPD training steps end to end (student rollout, teacher rewrite, verification,
# teacher scoring, KL, optimizer step) at the paper's shapes — a Qwen3-1.7B student and a Qwen3-8B
# teacher — with random bf16 weights built from the real Qwen3 configs and tokenizer shipped in
# tests/fixtures/qwen3. No network, no downloads. Prints per-phase times, rollout tokens/s and peak
# GPU memory per step, and the MPD/OPD step-time ratio; about 5 minutes on one H100 or H200 and
# stopped at 8 (GPU_CHECK_TIMEOUT).
#
#   scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: gpu_check/
#
# Results: OUT_DIR/bench.txt (the table), OUT_DIR/bench.json (every number), OUT_DIR/gpu.txt (the card).
# With random weights no rewrite parses, so every rewrite is generated in full and then rejected:
# MPD's worst case (see docs/PERFORMANCE.md). GPU_CHECK_* variables override the shapes (the test
# suite runs this script on CPU with GPU_CHECK_ALLOW_CPU=1 and the tiny Qwen3 config).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-gpu_check}
if [ -x .venv/bin/mpdistill ]; then BIN=.venv/bin/; else BIN=""; fi
PYTHON=${PYTHON:-${BIN}python}
MPDISTILL=${MPDISTILL:-${BIN}mpdistill}
FIXTURES=tests/fixtures/qwen3
STUDENT=${GPU_CHECK_STUDENT:-$FIXTURES/Qwen3-1.7B.json}
TEACHER=${GPU_CHECK_TEACHER:-$FIXTURES/Qwen3-8B.json}
BATCH=${GPU_CHECK_BATCH:-8}
PROMPT=${GPU_CHECK_PROMPT_TOKENS:-128}
COMPLETION=${GPU_CHECK_COMPLETION_TOKENS:-256}
REWRITE=${GPU_CHECK_REWRITE_TOKENS:-128}
WARMUP=${GPU_CHECK_WARMUP:-1}
REPEATS=${GPU_CHECK_REPEATS:-3}
LIMIT=${GPU_CHECK_TIMEOUT:-480}

if [ -z "${GPU_CHECK_ALLOW_CPU:-}" ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU is visible to $PYTHON; run it on a GPU node (or set GPU_CHECK_ALLOW_CPU=1 with small GPU_CHECK_* shapes)" >&2
  exit 3
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } > "$OUT/gpu.txt"
"$PYTHON" -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")' >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
echo "gpu_check: student $STUDENT, teacher $TEACHER, batch $BATCH, prompt $PROMPT, completion $COMPLETION, rewrite $REWRITE tokens; $WARMUP warm-up + $REPEATS measured steps per method"

start=$(date +%s)
status=0
timeout "$LIMIT" "$MPDISTILL" bench --student "$STUDENT" --teacher "$TEACHER" --tokenizer "$FIXTURES" \
  --batch-size "$BATCH" --prompt-length "$PROMPT" --completion-length "$COMPLETION" --rewrite-tokens "$REWRITE" \
  --warmup "$WARMUP" --repeats "$REPEATS" --json "$OUT/bench.json" 2>"$OUT/bench.log" | tee "$OUT/bench.txt" || status=$?
elapsed=$(( $(date +%s) - start ))
if [ "$status" -eq 124 ]; then
  echo "gpu_check: stopped after $LIMIT s (GPU_CHECK_TIMEOUT); lower GPU_CHECK_REPEATS or the token counts" >&2
elif [ "$status" -ne 0 ]; then
  echo "gpu_check: the bench failed (exit $status); the last lines of $OUT/bench.log:" >&2
  tail -n 20 "$OUT/bench.log" >&2
fi
echo "gpu_check: $elapsed s in all; results in $OUT/"
exit "$status"
