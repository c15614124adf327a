#!/usr/bin/env bash
# Set up (if needed) and launch the app on sample_data/. Extra arguments go to `retrieval-app`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/retrieval-app "$@"
