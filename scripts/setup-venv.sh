#!/usr/bin/env bash
# Create .venv and install the project with its test extra. On a fresh Debian machine the
# venv module needs python3-venv (ensurepip); install it when we are root and it is missing.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Loom Exchange needs Python >= 3.11; $PY is $("$PY" --version 2>&1)" >&2
  exit 1
fi
if ! "$PY" -m venv "$VENV" 2>/dev/null; then
  rm -rf "$VENV"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "python venv support missing: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv "$VENV"
  else
    echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
"$VENV/bin/python" -m pip install -q -e '.[test]'
