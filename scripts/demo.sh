#!/usr/bin/env bash
# The main job. Without PLEG_RUNTIME_ENDPOINT it brings up the project-local
# containerd 1.7 (scripts/containerd.sh, installing it on first use) and
# leaves it running; `scripts/containerd.sh down` stops it. Then it runs:
#   - `pleg run`, the daemon, against the runtime (health and metrics on
#     PLEG_HEALTH_ADDR, default 127.0.0.1:10258; gRPC on .local/demo/pleg.sock);
#   - `pleg watch --daemon`, which prints the daemon's events live;
#   - `pleg-demo --daemon-health` (a pleg-testkit binary), which drives a
#     small workload of pods through the runtime and prints the daemon's
#     health and metrics.
# Extra arguments go to `pleg-demo` (for example --pods 10).
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
cargo build --release --locked --quiet -p pleg -p pleg-testkit --bins
pleg=target/release/pleg
demo=target/release/pleg-demo
health=${PLEG_HEALTH_ADDR:-127.0.0.1:10258}
dir=.local/demo
mkdir -p "$dir"
socket=$dir/pleg.sock

"$pleg" run --runtime-endpoint "$PLEG_RUNTIME_ENDPOINT" --health-addr "$health" \
  --grpc-socket "$socket" --log-level info 2>"$dir/daemon.log" &
daemon=$!
watch=
stop() {
  [ -n "$watch" ] && kill -TERM "$watch" 2>/dev/null
  kill -TERM "$daemon" 2>/dev/null
  wait 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 100); do
  [ -S "$socket" ] && break
  if ! kill -0 "$daemon" 2>/dev/null; then
    echo "demo.sh: pleg run exited; its log ($dir/daemon.log):" >&2
    cat "$dir/daemon.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "demo.sh: pleg run is up (pid $daemon; health http://$health/healthz; log $dir/daemon.log)"
"$pleg" watch --daemon "$socket" --namespace pleg-demo &
watch=$!
"$demo" --runtime-endpoint "$PLEG_RUNTIME_ENDPOINT" --daemon-health "$health" "$@"
echo "demo.sh: done; stopping pleg watch and pleg run (SIGTERM)"
