#!/usr/bin/env bash
# The main job with no services: tag a folder of images with TagCLIP, one JSON line per image.
#   scripts/demo.sh [IMAGE_DIR] [LABELS]       (defaults: examples/images, a few everyday labels)
# Weights: TAGCLIP_CHECKPOINT if set, else OpenAI's ViT-B-16 from the cache dir or a download. On a machine
# with neither (offline CI), it says so and falls back to a random-weight checkpoint so the whole pipeline
# still runs end to end; the tags are then meaningless.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
PY="$ROOT/.venv/bin/python"
IMAGES="${1:-examples/images}"
LABELS="${2:-person,dog,cat,car,bicycle,bird,boat,chair,bottle,tvmonitor}"
OUT="${OUT:-$ROOT/.cache/demo-results.jsonl}"
mkdir -p "$(dirname "$OUT")"

if [[ "$IMAGES" == "examples/images" && ! -d "$IMAGES" ]]; then
  "$PY" -c "from tests.fixtures.images import write_parity_images; write_parity_images('examples/images')"
fi

run_tag() { "$ROOT/.venv/bin/tagclip" tag "$IMAGES" --labels "$LABELS" --out "$OUT" "$@"; }

if [[ -n "${TAGCLIP_CHECKPOINT:-}" ]]; then
  run_tag --checkpoint "$TAGCLIP_CHECKPOINT"
elif ! run_tag; then
  echo "demo: real CLIP weights are not available here; using a RANDOM-WEIGHT checkpoint (tags are meaningless)" >&2
  RANDOM_CKPT="$ROOT/.cache/random-ViT-B-16.pt"
  [[ -f "$RANDOM_CKPT" ]] || "$PY" -c "
from tagclip_core.random_weights import VIT_B_16, write_random_checkpoint
write_random_checkpoint('$RANDOM_CKPT', VIT_B_16)"
  run_tag --checkpoint "$RANDOM_CKPT"
fi
echo "demo: results in $OUT" >&2
head -n 3 "$OUT"
