#!/usr/bin/env bash
# The benchmark against real containerd: builds the release `pleg` and
# `pleg-bench`, brings up the bench's own containerd instances
# (PLEG_CRI_INSTANCE=bench: 1.7, and 2.1 where scripts/containerd.sh knows
# it), and runs pleg-bench, which writes bench/REPORT.md and the plots.
#
#   scripts/bench-containerd.sh            the full run (about 25 minutes)
#   scripts/bench-containerd.sh --quick    a short run (under 3 minutes) that
#                                          only has to finish
#   scripts/bench-containerd.sh --quick --out /tmp/x    elsewhere than bench/
#
# Other arguments go to pleg-bench (see `pleg-bench --help`). The criterion
# micro-benchmark of a relist against containerd is
# `cargo bench --features containerd-tests --bench containerd`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
export PLEG_CRI_INSTANCE=bench
versions=()
for version in 1.7 2.1; do
  if [[ $version != 1.7 ]] && ! scripts/containerd.sh --help 2>/dev/null | grep -q -- "$version"; then
    echo "bench-containerd.sh: scripts/containerd.sh has no containerd $version; benching without it" >&2
    continue
  fi
  if scripts/containerd.sh up --version "$version"; then
    versions+=("$version")
  elif [[ $version == 1.7 ]]; then
    echo "bench-containerd.sh: error: containerd 1.7 (bench instance) did not come up" >&2
    exit 1
  else
    echo "bench-containerd.sh: containerd $version (bench instance) did not come up; benching without it" >&2
  fi
done
cargo build --locked --release -p pleg -p pleg-testkit --bin pleg --bin pleg-bench
IFS=,
exec target/release/pleg-bench --pleg target/release/pleg --containerd-script scripts/containerd.sh \
  --versions "${versions[*]}" "$@"
