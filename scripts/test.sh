#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests and doctests.
# (The tests against a real containerd join this script when the CRI runtime lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
exec cargo test --locked "$@"
