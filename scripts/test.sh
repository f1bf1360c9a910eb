#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against real Redis, RQ workers and Label Studio.
# Sets up the project venv, then runs pytest with TAGCLIP_TEST_PROVISION=1: once the tests are collected,
# tests/conftest.py installs what the selected ones need (scripts/provision.sh: Label Studio, redis-server,
# Chromium, Docker Compose), and every such program is then required (missing fails, never skips).
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
export TAGCLIP_TEST_PROVISION=1
exec "$ROOT/.venv/bin/python" -m pytest "$@"
