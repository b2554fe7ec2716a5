#!/usr/bin/env bash
# The project-local Python environment for the gRPC interoperability tests
# (tests/containerd_grpc_python.rs runs tests/python/pleg_client.py with it):
# a venv at $PLEG_PY_DIR (default <repo>/.local/py) with the pinned packages
# of tests/python/requirements.txt (grpcio, grpcio-tools, protobuf) from PyPI.
#
#   scripts/python-env.sh           create or update it; idempotent, fast when done
#   scripts/python-env.sh --python  print the venv's interpreter
#
# Needs python3 (3.8 or later); when `python3 -m venv` does not work (Debian's
# python3 without python3-venv), installs Debian's python3-venv with apt-get.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY_DIR=$(realpath -m -- "${PLEG_PY_DIR:-$REPO/.local/py}")
REQUIREMENTS=$REPO/tests/python/requirements.txt
STAMP=$PY_DIR/.pleg-requirements
PYTHON=$PY_DIR/bin/python

say() { echo "python-env.sh: $*" >&2; }
die() {
	echo "python-env.sh: error: $*" >&2
	exit 1
}

case ${1:-} in
"") ;;
--python)
	echo "$PYTHON"
	exit 0
	;;
-h | --help)
	sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument '$1' (expected nothing, --python or --help)" ;;
esac

# Done already: the venv works and holds exactly these requirements.
if [ -x "$PYTHON" ] && cmp -s "$REQUIREMENTS" "$STAMP" &&
	"$PYTHON" -c 'import grpc, grpc_tools.protoc, google.protobuf' 2>/dev/null; then
	exit 0
fi

apt_install() {
	[ "$(id -u)" -eq 0 ] || die "need root to apt-get install $* (or install it yourself)"
	command -v apt-get >/dev/null || die "no apt-get to install $*: install it yourself"
	say "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } ||
		die "apt-get install $* failed"
}

command -v python3 >/dev/null || apt_install python3 python3-venv
if [ ! -x "$PYTHON" ]; then
	mkdir -p "$(dirname "$PY_DIR")"
	if ! python3 -m venv "$PY_DIR" >/dev/null 2>&1; then
		rm -rf "$PY_DIR"
		apt_install python3-venv
		python3 -m venv "$PY_DIR" || die "python3 -m venv $PY_DIR failed"
	fi
fi
say "pip install -r tests/python/requirements.txt into $PY_DIR"
"$PYTHON" -m pip install -q --disable-pip-version-check --only-binary=:all: -r "$REQUIREMENTS" ||
	die "pip install -r $REQUIREMENTS failed"
"$PYTHON" -c 'import grpc, grpc_tools.protoc, google.protobuf' ||
	die "the venv $PY_DIR cannot import grpc and grpc_tools after pip install"
cp "$REQUIREMENTS" "$STAMP"
say "ready: $PYTHON ($("$PYTHON" -c 'import grpc; print("grpcio", grpc.__version__)'))"
