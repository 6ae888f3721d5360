#!/usr/bin/env bash
# Run the test suite: sets up .venv when missing, then pytest (arguments are passed on).
#   ./run_tests.sh                 # everything, including a smoke run of every notebook
#   ./run_tests.sh -m "not slow"   # the fast library tests only
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
set +e
python -m pytest "$@"
status=$?
set -e
# pytest's exit code 5 means "no tests collected": not a failure of the project.
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests"
    exit 0
fi
exit $status
