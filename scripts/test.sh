#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the default test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
