#!/usr/bin/env bash
# Issue 11's example: teach the shipped model a style it never saw (Mozilla's FxEmoji, Apache-2.0,
# left out of the default build), as a user would with their own images, then measure what changed.
#   1. the icon set written as a user's image folder (PNG + metadata.jsonl captions);
#   2. a full fine-tune and a LoRA fine-tune (`unclip finetune`: import, embed, prior + decoder + the
#      decoder's high-noise expert), each reporting style retrieval before/after and writing before_after.png;
#   3. the evaluation's headline numbers on the original held-out prompts: base, full, LoRA;
#   4. docs/finetune_fxemoji.png: real held-out images, base, full and LoRA rows for the same captions.
# OUT (default ~/.cache/unclip/examples) holds everything; THREADS the torch CPU threads.
set -euo pipefail
cd "$(dirname "$0")/.."
UNCLIP=${UNCLIP:-.venv/bin/unclip}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
OUT=${OUT:-$HOME/.cache/unclip/examples}
STEPS=${STEPS:-200}  # finetune's default: the full fine-tune in ~25 min on 2 cores without AMX
# bf16 autocast where the CPU has AMX (there: bf16 matmul 2.4 TFLOPS vs 0.37 fp32, decoder steps 1.7x faster,
# measured); fp32 elsewhere (a CPU with AVX512-BF16 but no AMX ran bf16 slower than fp32, measured)
MP=${MP:-$($PY -c 'from unclip.precision import native_bf16; print("bf16" if native_bf16() else "no")')}
EVAL="--n 32 --diversity-prompts 4 --no-upsample --threads $THREADS --json"

$PY scripts/iconify_folder.py fxemoji "$OUT/fxemoji"
SECONDS=0
$UNCLIP finetune "$OUT/fxemoji" --style fxemoji --out "$OUT/ft-full" \
  --steps "$STEPS" --mixed-precision "$MP" --threads "$THREADS" --json | tail -1 > "$OUT/ft-full.json"
echo "full fine-tune: $SECONDS s wall"; SECONDS=0
$UNCLIP finetune "$OUT/fxemoji" --style fxemoji --out "$OUT/ft-lora" \
  --steps "$STEPS" --lora-rank 8 --lr 1e-3 --mixed-precision "$MP" --threads "$THREADS" --json | tail -1 > "$OUT/ft-lora.json"
echo "LoRA fine-tune: $SECONDS s wall"
$UNCLIP eval $EVAL > "$OUT/eval-base.json"
$UNCLIP eval --model "$OUT/ft-full/model" $EVAL > "$OUT/eval-full.json"
$UNCLIP eval --lora "$OUT/ft-lora/lora" $EVAL > "$OUT/eval-lora.json"  # each stage's adapter (prior, decoder, expert)
$PY scripts/finetune_figure.py "$OUT" docs/finetune_fxemoji.png
