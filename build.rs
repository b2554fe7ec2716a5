//! Compiles pleg's own gRPC API (`proto/pleg/v1/pleg.proto`) into Rust: the
//! messages, the `Pleg` server trait and its client. The code is included by
//! `src/server/grpc/mod.rs`; protobuf types never leave that module.
//!
//! Also names the commit the binary is built from, for `pleg --version`, the
//! man page and `pleg run`'s start-up log: see [`git_version`].

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/pleg/v1/pleg.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    git_version()?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Labels as ordered maps: deterministic on the wire and in output.
        .btree_map(".pleg.v1")
        .compile_protos(&[PROTO], &["proto"])
        .map_err(|e| format!("compiling {PROTO} with protoc: {e}"))?;
    Ok(())
}

/// The paths the binary is built from: `-dirty` means one of them differs
/// from the commit, and a change to any of them runs this script again so
/// that `-dirty` never goes stale. (`tests/`, `benches/` and the docs are
/// not part of the binary and are left out.)
const SOURCES: &[&str] = &[
    "src",
    "proto",
    "vendor",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
];

/// Sets `PLEG_VERSION` (`0.1.0 (git 1a2b3c4d5e6f, 2026-12-03)`: the commit's
/// first 12 digits, `-dirty` when [`SOURCES`] differ from it, and the
/// commit's date), `PLEG_BUILD_COMMIT` (the commit alone) and
/// `PLEG_BUILD_DATE` (the date, or empty) for the crate.
///
/// The commit comes from `git rev-parse HEAD` when this is a git checkout of
/// pleg; else from the environment variable `PLEG_GIT_COMMIT` (for builds
/// from a tarball that know their commit); else it is `unknown`. Git being
/// absent, or this not being a checkout, never fails the build.
fn git_version() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PLEG_GIT_COMMIT");
    let (commit, date) = match git_commit() {
        Some(found) => found,
        None => (
            commit_from_env()?.unwrap_or_else(|| "unknown".to_owned()),
            None,
        ),
    };
    let package = std::env::var("CARGO_PKG_VERSION")?;
    let version = match &date {
        Some(date) => format!("{package} (git {commit}, {date})"),
        None => format!("{package} (git {commit})"),
    };
    println!("cargo:rustc-env=PLEG_VERSION={version}");
    println!("cargo:rustc-env=PLEG_BUILD_COMMIT={commit}");
    println!(
        "cargo:rustc-env=PLEG_BUILD_DATE={}",
        date.unwrap_or_default()
    );
    Ok(())
}

/// `git` in the package's directory: its trimmed standard output, or `None`
/// when git is missing or the command fails.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        // A build must never take the index lock from someone's `git add`.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit (12 digits, `-dirty` when the sources differ) and its date,
/// when this is a git checkout of pleg; watches what moves HEAD.
fn git_commit() -> Option<(String, Option<String>)> {
    // A crate unpacked inside some other repository (a home directory kept
    // in git) is no checkout of pleg: its own build script must be tracked.
    git(&["ls-files", "--error-unmatch", "build.rs"])?;
    let head = git(&["rev-parse", "--verify", "HEAD"])?;
    let short = head.get(..12).unwrap_or(&head);
    watch_head();
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend_from_slice(SOURCES);
    for source in SOURCES {
        watch(std::path::Path::new(source));
    }
    let commit = match git(&status) {
        Some(changes) if changes.is_empty() => short.to_owned(),
        Some(_) => format!("{short}-dirty"),
        // Status failing where rev-parse worked: say nothing rather than guess.
        None => short.to_owned(),
    };
    let date = git(&["show", "-s", "--no-show-signature", "--format=%cs", "HEAD"])
        .filter(|date| !date.is_empty());
    Some((commit, date))
}

/// Runs this script again when HEAD moves: HEAD itself (a checkout, or a
/// detached HEAD), the branch it points to as a loose ref, and
/// `packed-refs`. In a worktree HEAD is the worktree's own and the refs are
/// the common directory's. A path that does not exist is never watched (cargo
/// would run the script at every build); a branch with no loose ref yet is
/// watched through the nearest directory that exists, where its first
/// commit after `git pack-refs` will write it.
fn watch_head() {
    let absolute = |dir: String| {
        let dir = std::path::PathBuf::from(dir);
        if dir.is_absolute() {
            dir
        } else {
            // Relative to the package directory, where git ran.
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_default()
                .join(dir)
        }
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(absolute) else {
        return;
    };
    let common_dir =
        git(&["rev-parse", "--git-common-dir"]).map_or_else(|| git_dir.clone(), absolute);
    let head = git_dir.join("HEAD");
    watch(&head);
    watch(&common_dir.join("packed-refs"));
    let Some(branch) = std::fs::read_to_string(&head)
        .ok()
        .and_then(|text| text.strip_prefix("ref:").map(|r| r.trim().to_owned()))
    else {
        return;
    };
    let mut path = common_dir.join(branch);
    while !path.exists() {
        if !path.pop() || !path.starts_with(&common_dir) {
            return;
        }
    }
    watch(&path);
}

/// `rerun-if-changed` for a path that exists.
fn watch(path: &std::path::Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `PLEG_GIT_COMMIT`, when set and not blank: a commit id, cut to 12 digits
/// like git's; anything that is no commit id fails the build, named.
fn commit_from_env() -> Result<Option<String>, String> {
    let Ok(raw) = std::env::var("PLEG_GIT_COMMIT") else {
        return Ok(None);
    };
    let commit = raw.trim();
    if commit.is_empty() {
        return Ok(None);
    }
    let (id, dirty) = match commit.strip_suffix("-dirty") {
        Some(id) => (id, "-dirty"),
        None => (commit, ""),
    };
    if id.len() < 7 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "PLEG_GIT_COMMIT {raw:?}: not a commit id (at least 7 hex digits, optionally followed by -dirty)"
        ));
    }
    let id = id.get(..12).unwrap_or(id).to_ascii_lowercase();
    Ok(Some(format!("{id}{dirty}")))
}
