#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with xtalign installed in editable mode.
# Safe to re-run; it only installs what is missing. torch is pinned to the CPU build first so that
# pip never resolves a multi-GB CUDA build by accident (set XTALIGN_TORCH to choose another).
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
stamp=.venv/.xtalign-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  quiet "${pip[@]}" install "${XTALIGN_TORCH:-torch==2.13.0}"
  quiet "${pip[@]}" install -e ".[dev]"
  touch "$stamp"
fi
