#!/usr/bin/env bash
# Set up runtail in ./.venv on a fresh machine.
#   bash scripts/setup.sh         runtime only (recorder, tailer, replay)
#   bash scripts/setup.sh --dev   everything the tests need: torch, Lightning, Flower, Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

if [ "$dev" = 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    echo "setup: installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
  if ! command -v rsync >/dev/null; then
    echo "setup: installing rsync for the re-sync tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq rsync >/dev/null
  fi
  if ! command -v java >/dev/null; then
    echo "setup: installing Debian's default-jre-headless (Java 17) for the Spark test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
  fi
  # The local CPU build; plain `torch` would pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e '.[dev]'
else
  "${pip[@]}" -e .
fi
# Bytecode for our own modules: an editable install leaves them uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set every command would compile them again (15 ms a start).
.venv/bin/python -m compileall -q recorder tailer replay
echo "setup: ready in .venv ($(.venv/bin/python --version))"
