#!/usr/bin/env bash
# A soak run (a benchmark setting, not CI): `pleg run` in evented mode against
# the project-local containerd 1.7 while pleg-churn (a pleg-testkit binary)
# churns pods with short-lived containers (run, create, start, exit, remove,
# several pods at once). At 0, 1, 5 and 10 minutes (those within the run,
# and its end) it samples the daemon's RSS (VmRSS), open file descriptors,
# threads and tokio tasks (`pleg_tokio_alive_tasks` on /metrics), and the
# events it has handled, and prints a table (also kept in
# .local/soak/report.txt). A leak shows as a column that keeps climbing.
#
#   scripts/soak.sh [--minutes N] [-- pleg-churn flags, such as --concurrency 8]
#
# containerd: the repo's default ($PLEG_CRI_DIR, else .local/cri). If it is
# not up, the script brings it up and takes it down at the end; one that was
# already up is left as it was. Do not run it while the containerd_evented
# tests run against the same containerd: an evented pleg takes its events.
# The daemon's health and metrics are on PLEG_SOAK_HEALTH_ADDR (default
# 127.0.0.1:10259).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

minutes=10
churn_args=()
while [ $# -gt 0 ]; do
  case $1 in
  --minutes)
    [ $# -ge 2 ] || { echo "soak.sh: --minutes needs a value" >&2; exit 2; }
    minutes=$2
    shift 2
    ;;
  --minutes=*) minutes=${1#--minutes=}; shift ;;
  --) shift; churn_args=("$@"); break ;;
  -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $minutes in
'' | *[!0-9]* | 0) echo "soak.sh: --minutes must be a whole number of minutes, at least 1 (got '$minutes')" >&2; exit 2 ;;
esac

started_containerd=
if ! scripts/containerd.sh status >/dev/null 2>&1; then
  started_containerd=1
fi
scripts/containerd.sh up
eval "$(scripts/containerd.sh env)"
endpoint=$PLEG_CONTAINERD_ENDPOINT

cargo build --release --locked --quiet -p pleg -p pleg-testkit --bins
pleg=target/release/pleg
churn=target/release/pleg-churn
health=${PLEG_SOAK_HEALTH_ADDR:-127.0.0.1:10259}
dir=.local/soak
mkdir -p "$dir"
socket=$dir/pleg.sock
report=$dir/report.txt

"$pleg" run --mode evented --runtime-endpoint "$endpoint" --health-addr "$health" \
  --grpc-socket "$socket" --log-level warn 2>"$dir/daemon.log" &
daemon=$!
churner=
stop() {
  [ -n "$churner" ] && kill -TERM "$churner" 2>/dev/null && wait "$churner" 2>/dev/null
  kill -TERM "$daemon" 2>/dev/null
  wait "$daemon" 2>/dev/null || true
  if [ -n "$started_containerd" ]; then
    scripts/containerd.sh down || true
  fi
}
trap stop EXIT

ready=
for _ in $(seq 100); do
  if curl -fsS "http://$health/readyz" >/dev/null 2>&1; then ready=1; break; fi
  if ! kill -0 "$daemon" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "soak.sh: pleg run did not become ready; its log ($dir/daemon.log):" >&2
  cat "$dir/daemon.log" >&2
  exit 1
fi

# One sample line: minute, RSS, fds, threads, tokio tasks, events, stream state.
sample() {
  local minute=$1 status metrics rss threads fds tasks events state
  if ! status=$(cat "/proc/$daemon/status" 2>/dev/null); then
    echo "soak.sh: pleg run (pid $daemon) is gone; its log ($dir/daemon.log):" >&2
    cat "$dir/daemon.log" >&2
    exit 1
  fi
  rss=$(awk '/^VmRSS:/ {print $2}' <<<"$status")
  threads=$(awk '/^Threads:/ {print $2}' <<<"$status")
  fds=$(find "/proc/$daemon/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  metrics=$(curl -fsS "http://$health/metrics")
  tasks=$(awk '$1 == "pleg_tokio_alive_tasks" {print $2}' <<<"$metrics")
  events=$(awk '/^pleg_events_total\{/ {n += $2} END {printf "%d", n}' <<<"$metrics")
  state=$(awk '/^pleg_stream_state\{/ && $2 == 1 {sub(/.*state="/, "", $1); sub(/".*/, "", $1); print $1}' <<<"$metrics")
  printf '%6s  %9s  %8s  %7s  %11s  %8s  %s\n' "$minute" "$((rss / 1024)).$(((rss % 1024) * 10 / 1024))" \
    "$fds" "$threads" "$tasks" "$events" "$state" | tee -a "$report"
}

header=$(printf '%6s  %9s  %8s  %7s  %11s  %8s  %s' minute "RSS (MiB)" "open fds" threads "tokio tasks" events stream)
{
  echo "soak: pleg run --mode evented (pid $daemon) against $endpoint, $minutes min of churn ($(date -u +%FT%TZ))"
  echo "$header"
} | tee "$report"
sample 0

# The churn outlives the last sample by a little, so that it is still under
# way when that sample is taken; it is stopped right after.
"$churn" --runtime-endpoint "$endpoint" --image "$PLEG_TEST_IMAGE" \
  --duration "$((minutes * 60 + 30))s" "${churn_args[@]}" >"$dir/churn.log" 2>&1 &
churner=$!
start=$SECONDS
checkpoints=()
for m in 1 5 10; do
  [ "$m" -lt "$minutes" ] && checkpoints+=("$m")
done
checkpoints+=("$minutes")
for m in "${checkpoints[@]}"; do
  wait_s=$((m * 60 - (SECONDS - start)))
  [ "$wait_s" -gt 0 ] && sleep "$wait_s"
  if ! kill -0 "$churner" 2>/dev/null; then
    echo "soak.sh: pleg-churn ended early; its log ($dir/churn.log):" >&2
    cat "$dir/churn.log" >&2
    exit 1
  fi
  sample "$m"
done
kill -TERM "$churner"
wait "$churner" || { echo "soak.sh: pleg-churn failed; its log ($dir/churn.log):" >&2; cat "$dir/churn.log" >&2; exit 1; }
churner=
tail -n 1 "$dir/churn.log" | tee -a "$report"
warnings=$(grep -c -E ' (WARN|ERROR) ' "$dir/daemon.log" || true)
echo "daemon log: $warnings warnings or errors ($dir/daemon.log)" | tee -a "$report"
