#!/usr/bin/env bash
# The pleg container image, built offline: no registry, no base image, no docker.
#
# One layer holds the pleg binary (/usr/bin/pleg, the image's Entrypoint) and the shared
# libraries it links, dynamic loader included (as `ldd` finds them on this machine, copied
# as regular files to the paths ldd names), plus /etc/passwd, /etc/group and empty
# mount points. It is written as a docker-archive (docker save format), the way
# scripts/containerd.sh writes its busybox image: fixed mtimes and owners, entries in
# order, so the same binary and libraries give the same digests.
#
#   scripts/pleg-image.sh                         target/release/pleg (built if missing)
#   scripts/pleg-image.sh --binary target/debug/pleg --strip --import SOCK
#
# --import loads the image into a containerd's k8s.io namespace (the one the CRI plugin,
# and so the kubelet, uses) with that containerd's ctr; by default the project-local
# containerd 1.7's ($PLEG_CRI_DIR/pkg/containerd-1.7/usr/bin/ctr, see scripts/containerd.sh).
# tests/containerd_pod.rs builds and imports the image this way and runs it as
# deploy/daemonset.yaml does.
set -euo pipefail

usage() {
	cat <<EOF
Usage: scripts/pleg-image.sh [options]

Builds the pleg image as a docker-archive tar, offline; prints the image reference.

Options:
  --binary PATH   the pleg binary to package (default: target/release/pleg, built with
                  'cargo build --release --bin pleg' if missing; rebuild it yourself to
                  refresh it)
  --strip         package a copy without debug info (strip --strip-debug): for debug builds
  --tag REF       the image reference (default: $DEFAULT_TAG)
  --output TAR    where to write the tar (default: target/pleg-image/pleg.tar)
  --import SOCK   then import it into the containerd at SOCK (a socket path or unix://...),
                  namespace $NS, snapshotter overlayfs
  --remove SOCK   instead of building: remove the image --tag names from the containerd at
                  SOCK, and the ID reference its CRI plugin added (sha256:<config digest>)
                  unless another tag still names the same image
  --ctr PATH      the ctr for --import and --remove (default: \$PLEG_CRI_DIR/pkg/containerd-1.7/usr/bin/ctr,
                  PLEG_CRI_DIR defaulting to <repo>/.local/cri; now $CTR)
  -h, --help      this text

The image: Entrypoint ["/usr/bin/pleg"], Cmd ["run"], user root (it needs the runtime's
socket), linux/$(dpkg --print-architecture).
EOF
}

die() {
	echo "pleg-image.sh: error: $*" >&2
	exit 1
}
say() { echo "pleg-image.sh: $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRI_DIR=$(realpath -m -- "${PLEG_CRI_DIR:-$REPO/.local/cri}")
CTR=$CRI_DIR/pkg/containerd-1.7/usr/bin/ctr
DEFAULT_BINARY=$REPO/target/release/pleg
DEFAULT_TAG=docker.io/library/pleg:dev
NS=k8s.io

# Sets LIBS to the shared objects $1 loads at run time (loader included), as the paths
# ldd resolves them to; none for a static binary. Fails on a library not found.
shared_objects() {
	local binary=$1 out name arrow path _rest
	LIBS=()
	if ! out=$(LC_ALL=C ldd "$binary" 2>&1); then
		[[ $out == *"not a dynamic executable"* ]] && return 0
		die "ldd $binary failed: $out"
	fi
	[[ $out == *"statically linked"* ]] && return 0
	while read -r name arrow path _rest; do
		if [[ $arrow == "=>" ]]; then
			# "libfoo.so.1 => /lib/.../libfoo.so.1 (0x...)", or "=> not found"
			[[ $path == /* ]] || die "ldd $binary: $name not found"
			LIBS+=("$path")
		elif [[ $name == /* ]]; then
			LIBS+=("$name") # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
		fi # else the vDSO, which the kernel provides
	done <<<"$out"
	local lib
	for lib in "${LIBS[@]}"; do [[ -f $lib ]] || die "$lib (linked by $binary) is not a file"; done
}

build() {
	local binary=$1 strip=$2 tag=$3 output=$4 work packaged version arch
	work=$(mktemp -d "${TMPDIR:-/tmp}/pleg-image.XXXXXX")
	# shellcheck disable=SC2064 # expand now: $work is local
	trap "rm -rf '$work'" EXIT
	packaged=$binary
	if [[ $strip == yes ]]; then
		packaged=$work/pleg
		strip --strip-debug -o "$packaged" "$binary" || die "strip --strip-debug $binary failed"
	fi
	version=$("$binary" --version) || die "$binary --version failed: is it a pleg binary for this machine?"
	arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"
	shared_objects "$binary"

	mkdir -p "$(dirname "$output")"
	python3 - "$output.tmp" "$tag" "$arch" "$version" "$packaged" "${LIBS[@]}" <<'PY' || die "writing the image tar failed"
import hashlib, io, json, os, sys, tarfile

out, tag, arch, version, binary, *libs = sys.argv[1:]
EPOCH = "1970-01-01T00:00:00Z"

def entry(tf, name, kind, mode, data=b""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

def read(path):
    with open(path, "rb") as f:  # follows symlinks: the image gets the file itself
        return f.read()

files = {"usr/bin/pleg": (0o755, read(binary)),
         "etc/passwd": (0o644, b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                               b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
         "etc/group": (0o644, b"root:x:0:\nnogroup:x:65534:\n")}
for lib in libs:
    files[os.path.normpath(lib).lstrip("/")] = (0o755, read(lib))
# Mount points (the runtime's socket, /run/pleg, /proc, ...) and every parent of a file.
dirs = {"dev": 0o755, "etc": 0o755, "proc": 0o755, "root": 0o700, "run": 0o755,
        "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755}
for name in files:
    parent = os.path.dirname(name)
    while parent:
        dirs.setdefault(parent, 0o755)
        parent = os.path.dirname(parent)

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tf:
    for name in sorted(set(dirs) | set(files)):
        if name in dirs:
            entry(tf, name + "/", tarfile.DIRTYPE, dirs[name])
        else:
            entry(tf, name, tarfile.REGTYPE, *files[name])
layer = layer.getvalue()
diff_id = hashlib.sha256(layer).hexdigest()

config = {
    "architecture": arch, "os": "linux", "created": EPOCH,
    "config": {
        "Entrypoint": ["/usr/bin/pleg"], "Cmd": ["run"], "WorkingDir": "/",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Labels": {"org.opencontainers.image.title": "pleg",
                   "org.opencontainers.image.version": (version.split() + ["", ""])[1]},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    "history": [{"created": EPOCH, "created_by": "scripts/pleg-image.sh from " + version}],
}
config_data = json.dumps(config, sort_keys=True).encode()
config_name = hashlib.sha256(config_data).hexdigest() + ".json"
manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [diff_id + "/layer.tar"]}]

with tarfile.open(out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
    entry(tf, diff_id + "/", tarfile.DIRTYPE, 0o755)
    entry(tf, diff_id + "/layer.tar", tarfile.REGTYPE, 0o644, layer)
    entry(tf, config_name, tarfile.REGTYPE, 0o644, config_data)
    entry(tf, "manifest.json", tarfile.REGTYPE, 0o644, json.dumps(manifest).encode())
PY
	mv "$output.tmp" "$output"
	say "built $output ($(du -h --apparent-size "$output" | cut -f 1)): $tag, $version, ${#LIBS[@]} shared objects"
}

import_image() {
	local output=$1 sock=${2#unix://}
	[[ -x $CTR ]] || die "no ctr at $CTR (run scripts/containerd.sh install, or give --ctr)"
	[[ -S $sock ]] || die "containerd socket $sock: no such socket (is containerd up?)"
	"$CTR" --address "$sock" -n "$NS" images import --snapshotter overlayfs "$output" >&2 ||
		die "ctr images import $output into $sock failed"
	say "imported into $sock (namespace $NS)"
}

ctr_images() { "$CTR" --address "${1#unix://}" -n "$NS" images "${@:2}"; }

remove_image() {
	local sock=$1 tag=$2 digest named ids
	[[ -x $CTR ]] || die "no ctr at $CTR (give --ctr)"
	# `images ls` columns: REF TYPE DIGEST ...
	digest=$(ctr_images "$sock" ls | awk -v tag="$tag" '$1 == tag { print $3 }') ||
		die "ctr images ls on $sock failed"
	if [[ -z $digest ]]; then
		say "no image $tag on $sock"
		return
	fi
	ctr_images "$sock" rm "$tag" >/dev/null || die "ctr images rm $tag on $sock failed"
	named=$(ctr_images "$sock" ls | awk -v d="$digest" '$3 == d && $1 !~ /^sha256:/ { print $1 }')
	if [[ -z $named ]]; then
		ids=$(ctr_images "$sock" ls | awk -v d="$digest" '$3 == d && $1 ~ /^sha256:/ { print $1 }')
		# shellcheck disable=SC2086 # one word per reference
		[[ -z $ids ]] || ctr_images "$sock" rm $ids >/dev/null || die "ctr images rm $ids on $sock failed"
	fi
	say "removed $tag from $sock${named:+ (its content stays: also tagged $named)}"
}

main() {
	local binary="" strip=no tag=$DEFAULT_TAG output=$REPO/target/pleg-image/pleg.tar import="" remove=""
	need() { (($# >= 2)) || die "$1 needs a value (see --help)"; }
	while (($#)); do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--binary) need "$@"; binary=$2; shift 2 ;;
		--binary=*) binary=${1#*=}; shift ;;
		--strip) strip=yes; shift ;;
		--tag) need "$@"; tag=$2; shift 2 ;;
		--tag=*) tag=${1#*=}; shift ;;
		--output) need "$@"; output=$2; shift 2 ;;
		--output=*) output=${1#*=}; shift ;;
		--import) need "$@"; import=$2; shift 2 ;;
		--import=*) import=${1#*=}; shift ;;
		--remove) need "$@"; remove=$2; shift 2 ;;
		--remove=*) remove=${1#*=}; shift ;;
		--ctr) need "$@"; CTR=$2; shift 2 ;;
		--ctr=*) CTR=${1#*=}; shift ;;
		*) die "unknown argument '$1' (see --help)" ;;
		esac
	done
	[[ -n $tag ]] || die "--tag is empty"
	if [[ -n $remove ]]; then
		[[ -z $import && -z $binary ]] || die "--remove does not build: no --binary or --import with it"
		remove_image "$remove" "$tag"
		return
	fi
	if [[ -z $binary ]]; then
		binary=$DEFAULT_BINARY
		if [[ ! -e $binary ]]; then
			say "no $binary: cargo build --release --bin pleg"
			(cd "$REPO" && cargo build --release --bin pleg >&2) || die "cargo build --release --bin pleg failed"
		fi
	fi
	[[ -f $binary && -x $binary ]] || die "$binary: not an executable file"
	build "$binary" "$strip" "$tag" "$output"
	[[ -z $import ]] || import_image "$output" "$import"
	echo "$tag"
}

main "$@"
