#!/usr/bin/env bash
# Checks that proto/ (pleg's gRPC API) changed only in backward-compatible
# ways since the last release of the API: `buf breaking` with the FILE rule
# set (proto/buf.yaml says why) against the proto as of that commit. Lint is
# not run. buf comes from npm (@bufbuild/buf, pinned), installed into
# .local/buf on first use. CI runs this; run it before changing the proto.
#
#   scripts/proto-check.sh [--against REF]   (default: the last API release)
#
# A breaking change is one to make in a new package (pleg.v2), not in v1.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
# The last release of the API: the proto as of this commit is what clients
# in other languages were generated from.
AGAINST=64e54daf12d3ced7c2aaf1d34a421bd65eadff5e
while [ $# -gt 0 ]; do
  case $1 in
  --against) [ $# -ge 2 ] || { echo "proto-check.sh: --against needs a git ref" >&2; exit 2; }; AGAINST=$2; shift 2 ;;
  -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "proto-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

prefix=.local/buf
buf=$prefix/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || { echo "proto-check.sh: npm is needed to install buf (apt-get install npm)" >&2; exit 1; }
  echo "proto-check.sh: installing buf $BUF_VERSION into $prefix (npm)" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION" >&2
fi
git rev-parse --verify --quiet "$AGAINST^{commit}" >/dev/null ||
  { echo "proto-check.sh: git ref $AGAINST is not in this clone (a shallow clone? fetch the history)" >&2; exit 1; }
against=$(git rev-parse "$AGAINST^{commit}")
echo "proto-check.sh: buf $("$buf" --version) breaking proto/ against $against (rules: FILE)"
"$buf" breaking proto --against ".git#ref=$against,subdir=proto"
echo "proto-check.sh: no breaking change"
