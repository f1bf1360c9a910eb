#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against real Redis, RQ workers and Label Studio.
# Installs what is missing (project venv, Label Studio venv, redis-server, chromium) and starts Redis if it is
# down.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
"$ROOT/scripts/setup_ls.sh"
"$ROOT/scripts/check_compose.sh"   # docker compose config (real Compose v2; no engine needed)

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test: installing redis-server" >&2
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then   # headless labeling-page checks (tests/integration/browser.py)
  echo "test: installing chromium" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "test: starting redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/tagclip-redis.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

exec "$ROOT/.venv/bin/python" -m pytest "$@"
