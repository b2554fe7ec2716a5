#!/usr/bin/env bash
# The whole test suite of the workspace (pleg and pleg-testkit): unit,
# integration and doc tests, plus the tests against a real containerd. It
# brings up the project-local containerd 2.1, 1.7 and 1.6 (scripts/containerd.sh;
# installing them on first use) and takes down again whatever it started,
# and creates the project-local Python venv of the grpcio interoperability
# tests (scripts/python-env.sh) if it is not there yet.
# Extra arguments go to the first `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

started=()
cleanup() {
  for version in "${started[@]}"; do
    scripts/containerd.sh down --version "$version" >/dev/null || true
  done
  # The fault suite's own instance (tests/faults_containerd.rs starts it).
  if [ "${faults_was_up:-1}" -ne 0 ]; then
    PLEG_CRI_INSTANCE=faults scripts/containerd.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
faults_was_up=1
PLEG_CRI_INSTANCE=faults scripts/containerd.sh status >/dev/null 2>&1 && faults_was_up=0
for version in 2.1 1.7 1.6; do
  if ! scripts/containerd.sh status --version "$version" >/dev/null 2>&1; then
    scripts/containerd.sh up --version "$version"
    started+=("$version")
  fi
done
# The Python (grpcio) client of the gRPC interoperability tests
# (tests/containerd_grpc_python.rs): the venv .local/py, created on first use.
scripts/python-env.sh
eval "$(scripts/containerd.sh env --version 1.7)"
eval "$(scripts/containerd.sh env --version 1.6)"
eval "$(scripts/containerd.sh env --version 2.1)"

# Everything against 1.7, and tests/containerd_v2.rs (what 2.x does
# differently) against 2.1.
echo "== cargo test (containerd ${PLEG_CONTAINERD_ENDPOINT#unix://}; 2.x tests on ${PLEG_CONTAINERD21_ENDPOINT#unix://})"
cargo test --locked --workspace --features containerd-tests "$@"
if [ "$#" -eq 0 ]; then
  echo "== relisting and evented tests again, against containerd 2.1 (${PLEG_CONTAINERD21_ENDPOINT#unix://})"
  PLEG_CONTAINERD_ENDPOINT="$PLEG_CONTAINERD21_ENDPOINT" PLEG_CONTAINERD_VERSION=2.1 \
    cargo test --locked --features containerd-tests --test containerd_relist --test containerd_evented
  echo "== relisting tests again, against containerd 1.6 (${PLEG_CONTAINERD16_ENDPOINT#unix://})"
  PLEG_CONTAINERD_ENDPOINT="$PLEG_CONTAINERD16_ENDPOINT" \
    cargo test --locked --features containerd-tests --test containerd_relist
fi
