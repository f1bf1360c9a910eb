#!/usr/bin/env bash
# Install Label Studio 1.23.2 into .venv-ls (gitignored), once. Idempotent: a marker file records the
# installed version, so a second run returns at once. Used by the integration tests (tests/integration).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LS_VENV:-$ROOT/.venv-ls}"
VERSION="${LS_VERSION:-1.23.2}"
MARKER="$VENV/.installed-label-studio-$VERSION"
PYTHON="${PYTHON:-python3}"

if [[ -f "$MARKER" && -x "$VENV/bin/label-studio" ]]; then
  exit 0
fi
# A lock so two concurrent test runs do not install into the same venv at once.
mkdir -p "$(dirname "$VENV")"
exec 9>"${TMPDIR:-/tmp}/tagclip-setup-ls.lock"
flock 9
if [[ -f "$MARKER" && -x "$VENV/bin/label-studio" ]]; then
  exit 0
fi
echo "setup_ls: installing label-studio==$VERSION into $VENV (about 90 s, about 1 GB)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "label-studio==$VERSION"
# (`label-studio --version` hangs offline: it asks PyPI for the latest version.)
"$VENV/bin/python" -c "import label_studio"
touch "$MARKER"
echo "setup_ls: done" >&2
