#!/usr/bin/env bash
# The main job: runs `pleg demo` against a container runtime, printing events
# live while it drives a small workload of pods. Without PLEG_RUNTIME_ENDPOINT
# it brings up the project-local containerd 1.7 first (scripts/containerd.sh,
# installing it on first use) and leaves it running; `scripts/containerd.sh
# down` stops it. Extra arguments go to `pleg demo` (see `pleg --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if [ -z "${PLEG_RUNTIME_ENDPOINT:-}" ]; then
  scripts/containerd.sh up
  eval "$(scripts/containerd.sh env)"
  export PLEG_RUNTIME_ENDPOINT="$PLEG_CONTAINERD_ENDPOINT"
else
  # The build still needs protoc (installed with the rest; fast when done).
  scripts/containerd.sh install
fi
cargo build --release --locked --quiet
exec target/release/pleg demo "$@"
