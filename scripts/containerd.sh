#!/usr/bin/env bash
# A project-local containerd (with its CRI plugin) for pleg's tests against a real runtime.
#
#   2.1: Debian sid's containerd 2.1 (pinned, see SID_VERSION; its .deb's sha256 checked);
#        config version 3; it broadcasts GetContainerEvents to every stream and replays
#        a backlog of up to 5 minutes to the first stream that connects.
#   1.7: Debian 13 (trixie)'s containerd 1.7, serves CRI GetContainerEvents.
#   1.6: Debian 12 (bookworm)'s containerd 1.6, answers GetContainerEvents with Unimplemented.
#
# All can run at once. Everything lives under $PLEG_CRI_DIR (default <repo>/.local/cri):
#   apt/<suite>/        private apt config, sources list and lists for trixie and sid
#   debs/<suite>/       downloaded .debs
#   pkg/containerd-2.1  pkg/containerd-1.7  pkg/containerd-1.6  pkg/busybox-static
#                       (dpkg -x, nothing installed)
#   image/busybox-pleg.tar   the test and sandbox images, built offline from busybox-static
#   <version>/          config.toml, containerd.sock, containerd.log, containerd.pid, root/,
#                       state/, run/ (seen by containerd as /run, see start_containerd)
# The only system changes: `apt-get install runc protobuf-compiler` (Debian 12's).
set -euo pipefail

usage() {
	cat <<EOF
Usage: scripts/containerd.sh <command> [--version 2.1|1.7|1.6]

A project-local containerd for pleg's CRI tests, under \$PLEG_CRI_DIR
(default <repo>/.local/cri; now $CRI_DIR).

Commands:
  install   fetch everything (runc, protoc, the three containerd packages, busybox-static) and
            build the image tar; idempotent, fast when done
  up        install if needed, start containerd, import the images; no-op if already up
  down      stop containerd, kill its shims and containers, unmount, and delete its data
            (root/, state/): the next 'up' starts afresh; safe when not up
  kill      SIGKILL containerd only, leaving shims and containers running (outage tests);
            'up' afterwards reconnects to them
  status    print pid, version and socket; exit 0 if up, 1 if not
  env       print export lines, for: eval "\$(scripts/containerd.sh env)"

Options:
  --version 2.1|1.7|1.6   which containerd (default 1.7); each has its own directory and socket

Images (namespace k8s.io):
  $IMAGE_REF        test image (busybox; Cmd /bin/sh)
  $PAUSE_REF  sandbox image (sleeps until SIGTERM/SIGKILL)

env prints PLEG_CRI_DIR, PLEG_TEST_IMAGE and PLEG_CONTAINERD_ENDPOINT (1.7),
PLEG_CONTAINERD21_ENDPOINT (2.1) or PLEG_CONTAINERD16_ENDPOINT (1.6).

containerd 2.1 is sid's $SID_VERSION, pinned (the sha256 of its .deb is checked). If sid
no longer serves it, install takes the newest 2.x sid serves that runs here, and says so.

Notes:
  - There is no CNI: pods must use the host network (NamespaceOption network = NODE).
  - containerd sees <dir>/<version>/run as its /run (it runs in its own mount namespace),
    so its container mounts are not visible from the host, and 'ctr run' from the host
    needs --fifo-dir <dir>/<version>/fifo (ctr's default, /run/containerd/fifo, is not
    where the shim looks).
EOF
}

die() {
	echo "containerd.sh: error: $*" >&2
	exit 1
}
say() { echo "containerd.sh: $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRI_DIR=$(realpath -m -- "${PLEG_CRI_DIR:-$REPO/.local/cri}")
IMAGE_REF=docker.io/library/busybox:pleg
PAUSE_REF=docker.io/library/busybox:pleg-pause
IMAGE_TAR=$CRI_DIR/image/busybox-pleg.tar
BUSYBOX=$CRI_DIR/pkg/busybox-static/bin/busybox
RUNC=/usr/sbin/runc
NS=k8s.io
# containerd 2.x from Debian sid, pinned: sid moves on, the tests should not.
SID_VERSION=2.1.9+ds1-5
SID_SHA256=2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591

select_version() {
	VERSION=$1
	case $VERSION in
	1.7) ENDPOINT_VAR=PLEG_CONTAINERD_ENDPOINT ;;
	1.6) ENDPOINT_VAR=PLEG_CONTAINERD16_ENDPOINT ;;
	2.1) ENDPOINT_VAR=PLEG_CONTAINERD21_ENDPOINT ;;
	*) die "unknown --version '$VERSION' (expected 2.1, 1.7 or 1.6)" ;;
	esac
	PKG_DIR=$CRI_DIR/pkg/containerd-$VERSION
	CONTAINERD=$PKG_DIR/usr/bin/containerd
	CTR=$PKG_DIR/usr/bin/ctr
	# PLEG_CRI_INSTANCE names a second instance of the same version (its own
	# directory and socket), for tests that stop or kill containerd.
	INST=$CRI_DIR/$VERSION${PLEG_CRI_INSTANCE:+-$PLEG_CRI_INSTANCE}
	SOCK=$INST/containerd.sock
	CONFIG=$INST/config.toml
	PIDFILE=$INST/containerd.pid
	LOG=$INST/containerd.log
	# sun_path holds 107 bytes, and containerd adds ".ttrpc" for its second socket.
	((${#SOCK} + 6 <= 107)) || die "socket path $SOCK is too long for a unix socket; set PLEG_CRI_DIR to a shorter directory"
}

# Runs "$@" holding an exclusive lock on file $1 (the lock is released when it returns).
with_lock() {
	local file=$1
	shift
	mkdir -p "$(dirname "$file")"
	(
		flock 9
		"$@"
	) 9>"$file"
}

# ---------------------------------------------------------------------------------- install

# apt for Debian suite $1 (trixie, sid) through a private config: own sources list, lists
# and cache directories, so the system's sources and lists are never touched.
apt_suite() {
	local suite=$1 dir=$CRI_DIR/apt/$1
	shift
	if [[ ! -f $dir/apt.conf ]]; then
		mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$dir/sources.list"
		# The #clear lines drop the system's update hooks (appstream, docker-clean), which
		# have no business running for a private list.
		cat >"$dir/apt.conf.tmp" <<EOF
#clear APT::Update::Post-Invoke-Success;
#clear APT::Update::Post-Invoke;
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
APT::Sandbox::User "root";
Dir::Etc::sourcelist "$dir/sources.list";
Dir::Etc::sourceparts "-";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
EOF
		mv "$dir/apt.conf.tmp" "$dir/apt.conf"
	fi
	if [[ ${1:-} != update ]] && ! compgen -G "$dir/lists/*_Packages*" >/dev/null; then
		apt-get -c "$dir/apt.conf" update >&2 || die "apt-get update (private $suite list) failed"
	fi
	apt-get -c "$dir/apt.conf" "$@"
}

apt_trixie() { apt_suite trixie "$@"; }
apt_sid() { apt_suite sid "$@"; }

apt_bookworm() { apt-get -o APT::Sandbox::User=root "$@"; }

# Downloads package $2 with apt function $1 into $3 (if no .deb of it is there yet) and
# prints the .deb's path. Refreshes the package lists once if the download fails.
fetch_deb() {
	local apt=$1 pkg=$2 dir=$3 deb
	mkdir -p "$dir"
	deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
	if [[ -z $deb ]]; then
		say "downloading $pkg ($apt)"
		if ! (cd "$dir" && $apt download "$pkg" >&2); then
			say "download failed; refreshing package lists ($apt update)"
			$apt update >&2 || die "$apt update failed"
			(cd "$dir" && $apt download "$pkg" >&2) || die "$apt download $pkg failed"
		fi
		deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
		[[ -n $deb ]] || die "$apt download $pkg left no ${pkg}_*.deb in $dir"
	fi
	echo "$deb"
}

# Unpacks a .deb into $2 unless already done (the rename makes a half-done unpack invisible).
unpack_deb() {
	local deb=$1 dest=$2
	[[ -d $dest ]] && return
	rm -rf "$dest.tmp"
	mkdir -p "$(dirname "$dest")"
	dpkg -x "$deb" "$dest.tmp" || die "dpkg -x $deb failed"
	mv "$dest.tmp" "$dest"
}

install_containerd() {
	local version=$1 apt=$2 suite=$3 dir=$CRI_DIR/pkg/containerd-$1 deb got
	if [[ ! -d $dir ]]; then
		deb=$(fetch_deb "$apt" containerd "$CRI_DIR/debs/$suite")
		unpack_deb "$deb" "$dir"
	fi
	# Fail here, not at `up`, if the mirror ever ships another containerd.
	got=$("$dir/usr/bin/containerd" --version) || die "$dir/usr/bin/containerd does not run"
	[[ $got == *" $version."* ]] || die "$suite's containerd is not $version: $got (delete $dir and its .deb to refetch)"
}

# Downloads sid's containerd into $1 and prints the .deb's path: the pinned $SID_VERSION,
# its sha256 checked; if sid no longer serves it, the newest 2.x it does serve (said
# plainly, and no hash to check it against).
fetch_sid_containerd() {
	local dir=$1 deb versions v
	mkdir -p "$dir"
	deb=$dir/containerd_${SID_VERSION}_$(dpkg --print-architecture).deb
	if [[ ! -s $deb ]]; then
		say "downloading containerd=$SID_VERSION (sid)"
		if ! (cd "$dir" && apt_sid download "containerd=$SID_VERSION" >&2); then
			apt_sid update >&2 || die "apt-get update (private sid list) failed"
			(cd "$dir" && apt_sid download "containerd=$SID_VERSION" >&2) || deb=
		fi
	fi
	if [[ -n $deb && -s $deb ]]; then
		local sum
		sum=$(sha256sum "$deb" | cut -d ' ' -f 1)
		[[ $sum == "$SID_SHA256" ]] ||
			die "$deb has sha256 $sum, not the pinned $SID_SHA256: delete it and retry; if sid rebuilt $SID_VERSION, check the new .deb and update SID_SHA256"
		echo "$deb"
		return
	fi
	# Not served any more: the newest 2.x that is.
	versions=$(apt-cache -c "$CRI_DIR/apt/sid/apt.conf" madison containerd | awk '$3 ~ /^2\./ { print $3 }' | sort -V -r -u)
	[[ -n $versions ]] || die "sid serves neither containerd $SID_VERSION nor any other containerd 2.x"
	v=${versions%%$'\n'*}
	say "WARNING: sid no longer serves containerd $SID_VERSION (pinned); taking sid's newest 2.x, $v, unpinned (no sha256 to check)"
	(cd "$dir" && apt_sid download "containerd=$v" >&2) || die "apt-get download containerd=$v (sid) failed"
	deb=$(find "$dir" -maxdepth 1 -name "containerd_${v/*:/}_*.deb" | head -n 1)
	[[ -n $deb ]] || die "apt-get download containerd=$v left no .deb in $dir"
	echo "$deb"
}

install_containerd_sid() {
	local dir=$CRI_DIR/pkg/containerd-2.1 deb got
	if [[ ! -d $dir ]]; then
		deb=$(fetch_sid_containerd "$CRI_DIR/debs/sid")
		unpack_deb "$deb" "$dir"
	fi
	# sid's containerd needs glibc 2.34; say so here, not at `up`, if it cannot run.
	got=$("$dir/usr/bin/containerd" --version 2>&1) ||
		die "sid's containerd ($dir/usr/bin/containerd) does not run on this machine: $got"
	[[ $got == *" 2."* ]] || die "sid's containerd is not 2.x: $got (delete $dir and $CRI_DIR/debs/sid to refetch)"
	[[ $got == *" 2.1."* ]] || say "note: --version 2.1 runs sid's $got, not 2.1 (see fetch_sid_containerd)"
}

system_packages() {
	local missing=() p
	for p in runc protobuf-compiler; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if ((${#missing[@]})); then
		say "apt-get install ${missing[*]}"
		apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
			{ apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
			die "apt-get install ${missing[*]} failed"
	fi
	"$RUNC" --version >/dev/null 2>&1 || die "$RUNC (Debian 12's runc) does not run: $("$RUNC" --version 2>&1 | head -n 1)"
}

# A docker-archive (docker save format) with two images sharing one layer: busybox with a
# symlink per applet in /bin, plus /etc/passwd, /etc/group and /tmp. Deterministic (fixed
# mtimes and owners), so the same busybox gives the same digests.
build_image() {
	[[ -s $IMAGE_TAR ]] && return
	say "building $IMAGE_TAR"
	mkdir -p "$(dirname "$IMAGE_TAR")"
	local applets
	applets=$("$BUSYBOX" --list | tr '\n' ' ') || die "$BUSYBOX --list failed"
	python3 - "$BUSYBOX" "$IMAGE_TAR.tmp" "$IMAGE_REF" "$PAUSE_REF" "$(dpkg --print-architecture)" \
		"$(dpkg-deb -f "$(find "$CRI_DIR/debs/bookworm" -name 'busybox-static_*.deb' | head -n 1)" Version)" \
		"$applets" <<'PY' || die "building the image tar failed"
import hashlib, io, json, sys, tarfile

busybox, out, image_ref, pause_ref, arch, bb_version, applets = sys.argv[1:8]
EPOCH = "1970-01-01T00:00:00Z"

def entry(tf, name, kind, mode, data=b"", link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 0, link
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tf:
    for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o755),
                    ("root", 0o700), ("sys", 0o755), ("tmp", 0o1777), ("var", 0o755)]:
        entry(tf, d + "/", tarfile.DIRTYPE, mode)
    entry(tf, "bin/busybox", tarfile.REGTYPE, 0o755, open(busybox, "rb").read())
    for a in sorted(set(applets.split()) - {"busybox"}):
        entry(tf, "bin/" + a, tarfile.SYMTYPE, 0o777, link="busybox")
    entry(tf, "etc/passwd", tarfile.REGTYPE, 0o644,
          b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    entry(tf, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
layer = layer.getvalue()
diff_id = hashlib.sha256(layer).hexdigest()

# The sandbox container runs until SIGTERM (its trap kills the sleep and exits 0) or SIGKILL.
pause_cmd = "trap 'kill $c; exit 0' TERM INT; sleep infinity & c=$!; wait"
images = [(image_ref, {"Cmd": ["/bin/sh"]}), (pause_ref, {"Entrypoint": ["/bin/sh", "-c", pause_cmd]})]

manifest, files = [], [(diff_id + "/layer.tar", layer)]
for ref, run in images:
    config = {
        "architecture": arch, "os": "linux", "created": EPOCH,
        "config": dict(Env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       WorkingDir="/", **run),
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": EPOCH, "created_by": "scripts/containerd.sh from busybox-static " + bb_version}],
    }
    data = json.dumps(config, sort_keys=True).encode()
    name = hashlib.sha256(data).hexdigest() + ".json"
    files.append((name, data))
    manifest.append({"Config": name, "RepoTags": [ref], "Layers": [diff_id + "/layer.tar"]})
files.append(("manifest.json", json.dumps(manifest).encode()))

with tarfile.open(out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
    entry(tf, diff_id + "/", tarfile.DIRTYPE, 0o755)
    for name, data in files:
        entry(tf, name, tarfile.REGTYPE, 0o644, data)
PY
	mv "$IMAGE_TAR.tmp" "$IMAGE_TAR"
}

installed() {
	[[ -d $CRI_DIR/pkg/containerd-2.1 && -d $CRI_DIR/pkg/containerd-1.7 && -d $CRI_DIR/pkg/containerd-1.6 && -s $IMAGE_TAR ]] &&
		dpkg-query -W -f='${Status}\n' runc protobuf-compiler 2>/dev/null | grep -c 'install ok installed' | grep -qx 2
}

install_locked() {
	system_packages
	install_containerd_sid
	install_containerd 1.7 apt_trixie trixie
	install_containerd 1.6 apt_bookworm bookworm
	local deb
	deb=$(fetch_deb apt_bookworm busybox-static "$CRI_DIR/debs/bookworm")
	unpack_deb "$deb" "$CRI_DIR/pkg/busybox-static"
	build_image
}

cmd_install() {
	with_lock "$CRI_DIR/.install.lock" install_locked
	say "installed under $CRI_DIR"
}

# ------------------------------------------------------------------------------- processes

# Prints the pids of this instance's containerd: its binary, started with its config
# (scanning /proc with builtins only; the pid file is only a hint).
containerd_pids() {
	local p args
	for p in /proc/[0-9]*; do
		[[ $p/exe -ef $CONTAINERD ]] || continue
		mapfile -d '' args 2>/dev/null <"$p/cmdline" || continue
		[[ " ${args[*]} " == *" --config $CONFIG "* ]] && echo "${p#/proc/}"
	done
	return 0
}

# Prints the pids of the shims serving this instance (they outlive containerd on `kill`).
shim_pids() {
	local p args
	for p in /proc/[0-9]*; do
		mapfile -d '' args 2>/dev/null <"$p/cmdline" || continue
		[[ ${args[0]:-} == *containerd-shim* && " ${args[*]} " == *" -address $SOCK "* ]] && echo "${p#/proc/}"
	done
	return 0
}

# Prints the pids given as arguments and all their descendants.
with_descendants() {
	local -A children=()
	local p line rest ppid
	for p in /proc/[0-9]*; do
		read -r line 2>/dev/null <"$p/stat" || continue
		rest=${line##*) }
		read -r _ ppid _ <<<"$rest"
		children[$ppid]+=" ${p#/proc/}"
	done
	local queue=("$@")
	while ((${#queue[@]})); do
		p=${queue[0]}
		queue=("${queue[@]:1}")
		echo "$p"
		# shellcheck disable=SC2206
		queue+=(${children[$p]:-})
	done
}

# True if pid $1 runs (a zombie does not: pid 1 here may take a while to reap it).
alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	[[ ${stat##*) } != Z* ]]
}

# Waits up to $1 seconds for the pids that follow to exit; fails if some are still alive.
wait_gone() {
	local deadline=$((SECONDS + $1)) p alive
	shift
	while :; do
		alive=()
		for p in "$@"; do alive "$p" && alive+=("$p"); done
		((${#alive[@]})) || return 0
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

ctr_() { "$CTR" --address "$SOCK" "$@"; }

server_version() {
	timeout 5 "$CTR" --address "$SOCK" version 2>/dev/null | awk '/^Server:/ { s = 1 } s && $1 == "Version:" { print $2; exit }'
}

cri_status() {
	timeout 5 "$CTR" --address "$SOCK" plugins ls 2>/dev/null | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { print $NF }'
}

log_tail() {
	echo "--- last lines of $LOG:" >&2
	tail -n 25 "$LOG" 2>/dev/null | cut -c 1-400 >&2 || true
	echo "---" >&2
}

# ---------------------------------------------------------------------------------- up

# containerd 2.x: config version 3, where the CRI plugin is split into images, runtime and
# the gRPC service.
write_config_v3() {
	cat >"$CONFIG" <<EOF
# Written by scripts/containerd.sh on each start; edits are lost.
version = 3
root = "$INST/root"
state = "$INST/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[plugins.'io.containerd.internal.v1.opt']
  path = "$INST/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$PAUSE_REF"

[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "$INST/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # The machine lacks CAP_SYS_RESOURCE: without this RunPodSandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  # Debian 12's runc: newer ones need a newer glibc.
  BinaryName = "$RUNC"
  SystemdCgroup = false

# No CNI here: pods use the host network namespace.
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["$INST/cni/bin"]
  conf_dir = "$INST/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  # Port 0: the instances would otherwise all want the default 10010.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

write_config() {
	if [[ $VERSION == 2.* ]]; then
		write_config_v3
		return
	fi
	cat >"$CONFIG" <<EOF
# Written by scripts/containerd.sh on each start; edits are lost.
version = 2
root = "$INST/root"
state = "$INST/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$INST/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  # The machine lacks CAP_SYS_RESOURCE: without this RunPodSandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Port 0: the two instances would otherwise both want the default 10010.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # Debian 12's runc: trixie's needs glibc 2.38.
  BinaryName = "$RUNC"
  SystemdCgroup = false

# No CNI here: pods use the host network namespace. Empty directories keep the CRI plugin
# away from /etc/cni and /opt/cni.
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$INST/cni/bin"
  conf_dir = "$INST/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$INST/certs.d"
EOF
}

# containerd and its shims hard-code /run/containerd for the shims' sockets (and ctr's and
# runc's defaults live there too). So containerd runs in its own mount namespace in which
# $INST/run is bind-mounted over /run: nothing lands in the host's /run, the two instances
# cannot collide, and the rootfs and shm mounts stay in that namespace, which dies with the
# last of containerd, its shims and their containers. (mount -n: without it, mount
# creates the host's /run/mount for its utab.) The pid stays the same through setsid,
# unshare and sh's exec, so $! is containerd's pid.
start_containerd() {
	mkdir -p "$INST/root" "$INST/state" "$INST/run/containerd" "$INST/opt" "$INST/cni/bin" "$INST/cni/net.d" "$INST/certs.d"
	echo "=== $(date -Is) containerd.sh up" >>"$LOG"
	(
		exec 9>&- # the instance lock must not be inherited
		cd "$INST"
		PATH=$PKG_DIR/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin
		export PATH
		# shellcheck disable=SC2016
		exec setsid unshare --mount --propagation slave -- /bin/sh -c 'mount -n --bind "$1" /run && exec "$2" --config "$3"' \
			containerd-ns "$INST/run" "$CONTAINERD" "$CONFIG" </dev/null >>"$LOG" 2>&1
	) &
	echo $! >"$PIDFILE"
}

# Waits until the socket answers or the process dies. Usually 1-3 s, but on a fresh CI
# clone, right after a release build, a first start of containerd 2.1 took 42 s (32 s of
# it before containerd logged anything; most likely the disk busy writing that build
# back); hence a generous bound (PLEG_CONTAINERD_START_TIMEOUT, seconds, default 180).
START_TIMEOUT=${PLEG_CONTAINERD_START_TIMEOUT:-180}
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
	{ echo "containerd.sh: error: PLEG_CONTAINERD_START_TIMEOUT must be a whole number of seconds, not \"$START_TIMEOUT\"" >&2; exit 2; }
wait_ready() {
	local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
	until [[ -n $(server_version) ]]; do
		alive "$pid" || {
			log_tail
			die "containerd $VERSION (pid $pid) exited during startup"
		}
		((SECONDS < deadline)) || {
			log_tail
			die "containerd $VERSION (pid $pid) did not answer on $SOCK within $START_TIMEOUT s (PLEG_CONTAINERD_START_TIMEOUT)"
		}
		sleep 0.1
	done
}

ensure_images() {
	local have
	have=$(ctr_ -n "$NS" images ls -q) || die "ctr images ls failed on $SOCK"
	if grep -qxF "$IMAGE_REF" <<<"$have" && grep -qxF "$PAUSE_REF" <<<"$have"; then return; fi
	say "importing $IMAGE_TAR into namespace $NS"
	ctr_ -n "$NS" images import --snapshotter overlayfs "$IMAGE_TAR" >&2 || die "ctr images import $IMAGE_TAR failed"
}

up_locked() {
	local pids pid status
	pids=$(containerd_pids)
	if [[ -n $pids ]]; then
		pid=${pids%%$'\n'*}
		wait_ready "$pid"
		ensure_images
		say "containerd $VERSION already up (pid $pid) on unix://$SOCK"
		return
	fi
	rm -f "$PIDFILE" "$SOCK" "$SOCK.ttrpc" # stale, from a kill or a crash
	write_config
	start_containerd
	pid=$(<"$PIDFILE")
	wait_ready "$pid"
	status=$(cri_status)
	[[ $status == ok ]] || {
		log_tail
		die "containerd $VERSION's CRI plugin (io.containerd.grpc.v1.cri) is '${status:-missing}', not ok: see $LOG"
	}
	ensure_images
	say "containerd $(server_version) up (pid $pid) on unix://$SOCK"
}

cmd_up() {
	installed || cmd_install
	with_lock "$INST/.lock" up_locked
}

# ---------------------------------------------------------------------------------- down

# Mount points under $INST in our mount namespace, deepest first.
our_mounts() {
	local _a _b _c _d mnt _rest
	while read -r _a _b _c _d mnt _rest; do
		mnt=$(printf '%b' "${mnt//\\/\\0}") # mountinfo escapes space, tab, newline and \ in octal
		if [[ $mnt == "$INST" || $mnt == "$INST"/* ]]; then echo "$mnt"; fi
	done </proc/self/mountinfo | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f 2-
}

down_locked() {
	local pids shims all root id m left
	pids=$(containerd_pids)
	if [[ -n $pids ]]; then
		# shellcheck disable=SC2086
		kill -TERM $pids 2>/dev/null || true
		# shellcheck disable=SC2086
		wait_gone 10 $pids || {
			say "containerd $VERSION ignored SIGTERM for 10 s; sending SIGKILL"
			kill -KILL $pids 2>/dev/null || true
			wait_gone 5 $pids || die "containerd $VERSION (pids $pids) survived SIGKILL"
		}
	fi
	# Containers: runc knows them all (CRI's and ctr's), also those whose shim died.
	for root in "$INST"/run/containerd/runc/*/; do
		[[ -d $root ]] || continue
		for id in $("$RUNC" --root "$root" list -q 2>/dev/null); do
			"$RUNC" --root "$root" delete --force "$id" 2>/dev/null || say "warning: runc delete --force $id failed"
		done
	done
	# Shims and anything still below them.
	shims=$(shim_pids)
	if [[ -n $shims ]]; then
		# shellcheck disable=SC2086
		all=$(with_descendants $shims | sort -un)
		# shellcheck disable=SC2086
		kill -KILL $all 2>/dev/null || true
		# shellcheck disable=SC2086
		wait_gone 10 $all || die "processes of containerd $VERSION survived SIGKILL: $all"
	fi
	# Normally none (they live in containerd's namespace), but leave nothing behind.
	while read -r m; do
		[[ -n $m ]] || continue
		umount "$m" 2>/dev/null || umount -l "$m" || say "warning: cannot unmount $m"
	done < <(our_mounts)
	left=$(our_mounts)
	[[ -z $left ]] || die "mounts left under $INST: $left"
	# Stale pods and containers in root/ would only confuse the next run's tests, and
	# importing the images again takes a fraction of a second.
	rm -rf "$INST/root" "$INST/state" "$INST/run" "$INST/opt" "$INST/fifo" "$PIDFILE" "$SOCK" "$SOCK.ttrpc"
	say "containerd $VERSION down"
}

cmd_down() {
	[[ -d $INST ]] || {
		say "containerd $VERSION down (never started)"
		return
	}
	with_lock "$INST/.lock" down_locked
}

cmd_kill() {
	local pids
	pids=$(containerd_pids)
	if [[ -z $pids ]]; then
		say "containerd $VERSION is not running"
		return
	fi
	# shellcheck disable=SC2086
	kill -KILL $pids
	# shellcheck disable=SC2086
	wait_gone 5 $pids || die "containerd $VERSION (pids $pids) survived SIGKILL"
	rm -f "$PIDFILE"
	say "containerd $VERSION killed (pid $pids); its shims and containers keep running"
}

cmd_status() {
	local pids version shims
	pids=$(containerd_pids)
	if [[ -z $pids ]]; then
		shims=$(shim_pids | wc -l)
		echo "containerd $VERSION: not running (socket unix://$SOCK; $shims shims alive)"
		return 1
	fi
	version=$(server_version)
	if [[ -z $version ]]; then
		echo "containerd $VERSION: pid ${pids//$'\n'/ } running but not answering on unix://$SOCK (log: $LOG)"
		return 1
	fi
	shims=$(shim_pids | wc -l)
	cat <<EOF
containerd $VERSION: running
  pid:      ${pids//$'\n'/ }
  version:  $version
  socket:   unix://$SOCK
  cri:      $(cri_status)
  shims:    $shims
  log:      $LOG
EOF
}

cmd_env() {
	printf 'export PLEG_CRI_DIR=%q\n' "$CRI_DIR"
	printf 'export %s=%q\n' "$ENDPOINT_VAR" "unix://$SOCK"
	printf 'export PLEG_TEST_IMAGE=%q\n' "$IMAGE_REF"
}

main() {
	local cmd="" version=1.7
	while (($#)); do
		case $1 in
		-h | --help | help)
			cmd=help
			shift
			;;
		--version) (($# >= 2)) || die "--version needs a value (1.7 or 1.6)"; version=$2; shift 2 ;;
		--version=*) version=${1#--version=}; shift ;;
		install | up | down | kill | status | env)
			[[ -z $cmd ]] || die "one command at a time (got '$cmd' and '$1')"
			cmd=$1
			shift
			;;
		*) die "unknown argument '$1' (see --help)" ;;
		esac
	done
	[[ -n $cmd ]] || {
		usage >&2
		exit 2
	}
	select_version "$version"
	case $cmd in
	help) usage ;;
	install) cmd_install ;;
	*) [[ $(id -u) == 0 || $cmd == env || $cmd == status ]] || die "$cmd needs root"; "cmd_$cmd" ;;
	esac
}

main "$@"
