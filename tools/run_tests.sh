#!/usr/bin/env bash
# The test command: set up the environment (idempotent) and run the test suite.
#   bash tools/run_tests.sh [pytest args...]      e.g. -m slow, -k crossformer, -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash tools/setup_env.sh
exec .venv/bin/python -m pytest "$@"
