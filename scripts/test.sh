#!/usr/bin/env bash
# The test command of the README: builds and runs every test. Tests that need a model file skip (and say which
# download script fetches it) when it is absent; run scripts/download-models.sh all first to run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests
swift test --skip-build "$@"
