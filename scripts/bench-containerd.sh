#!/usr/bin/env bash
# The benchmark against a real containerd: brings up the project-local
# containerd 1.7 (leaving it running) and runs benches/containerd.rs.
# Extra arguments go to criterion (for example a filter such as `list`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
scripts/containerd.sh up
eval "$(scripts/containerd.sh env)"
exec cargo bench --locked --features containerd-tests --bench containerd -- "$@"
