#!/usr/bin/env bash
# Create .venv with torch and tagclip-studio (server and dev extras). Idempotent: re-running with an unchanged
# pyproject.toml returns at once.
#   TORCH_SPEC  what pip installs for torch (default: the CPU-usable build this workplace keeps on disk;
#               on a GPU machine use e.g. "torch torchvision --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.tagclip-installed-$( (cat "$ROOT/pyproject.toml"; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
"$VENV/bin/pip" install -q $TORCH_SPEC
"$VENV/bin/pip" install -q -e "$ROOT[server,dev]"
rm -f "$VENV"/.tagclip-installed-*
touch "$STAMP"
echo "setup: $VENV ready" >&2
