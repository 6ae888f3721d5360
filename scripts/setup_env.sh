#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv.
#
# Sourced by run_all.sh and run_tests.sh. A fresh machine needs only Python 3.11 and pip:
# this installs the hccer_lib package with its pinned dependencies (constraints.txt) and
# TensorFlow (CPU). The environment is reused while pyproject.toml, constraints.txt and the
# extras asked for are unchanged, and updated when one changes. HCCER_EXTRAS names the
# optional dependencies installed (default "tensorflow,dev"; add ",ray" for the Ray executor).
set -euo pipefail

HCCER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HCCER_VENV:-$HCCER_ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3

EXTRAS="${HCCER_EXTRAS:-tensorflow,dev}"

stamp_of() {
    { cat "$HCCER_ROOT/pyproject.toml" "$HCCER_ROOT/constraints.txt"; echo "extras: $EXTRAS"; } | sha256sum | cut -d' ' -f1
}

want="$(stamp_of)"
have="$(cat "$VENV/.hccer-stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "[setup] creating the environment in $VENV with $("$PYTHON_BIN" --version)"
        "$PYTHON_BIN" -m venv "$VENV"
    else
        echo "[setup] project files changed: updating the environment in $VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v -E "Location .* is ignored" || true; }
    echo "[setup] installing hccer_lib and its dependencies (a few minutes the first time)"
    # (pip's notes about unused local index locations are filtered out; errors still show)
    "$VENV/bin/python" -m pip install --quiet --constraint "$HCCER_ROOT/constraints.txt" \
        --editable "$HCCER_ROOT[$EXTRAS]" 2>&1 | { grep -v -E "Location .* is ignored" || true; }
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
    echo "$want" > "$VENV/.hccer-stamp"
    echo "[setup] environment ready"
fi
export PATH="$VENV/bin:$PATH"
export MPLBACKEND="${MPLBACKEND:-Agg}"
# Quieter TensorFlow start-up logs; errors are still shown.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
