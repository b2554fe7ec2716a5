//! Flags, environment variables and shared plumbing of the `pleg` commands.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pleg::runtime::cri::{CriConfig, CriRuntime, DEFAULT_ENDPOINT, RuntimeEndpoint};
use pleg::select::{LabelSelector, Pattern, PodSelector};
use pleg::server::grpc;
use pleg::{Config, EventType, Filter, Mode, PodUid, RelistDuration};

pub(crate) mod generate;
pub(crate) mod monitor;
pub(crate) mod output;
pub(crate) mod pods;
pub(crate) mod run;
pub(crate) mod wait;
pub(crate) mod watch;

/// The process exit codes, documented in `--help` and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success (also after SIGTERM or SIGINT).
    Success = 0,
    /// Failure while running.
    Failure = 1,
    /// A bad command line: a flag or value, named.
    Usage = 2,
    /// The health address cannot be bound (in use, bad address, no permission).
    HealthAddr = 3,
    /// The gRPC socket cannot be bound.
    GrpcSocket = 4,
    /// The runtime is not available and `--wait` was not given.
    RuntimeUnavailable = 5,
    /// The daemon given with `--daemon` is not reachable.
    DaemonUnreachable = 6,
    /// Any other failure (of `wait`).
    Other = 7,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// A command's failure: an exit code and what went wrong.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The process exit code.
    pub code: Exit,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure with this exit code.
    pub(crate) fn new(code: Exit, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: Exit::Failure,
            error,
        }
    }
}

/// What a command returns.
pub(crate) type Outcome = Result<(), Failure>;

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure while running, 2 bad command line, 3 health address
unavailable, 4 gRPC socket unavailable, 5 runtime unavailable (without --wait),
6 daemon unreachable, 7 any other failure (wait). For wait, 1 means the condition was not
met within the timeout.";

/// The version `--version`, the man page and `pleg run`'s start-up log show:
/// the package version, the git commit the binary was built from (`-dirty`
/// when its sources differed from it; `unknown` when built outside a git
/// checkout without `PLEG_GIT_COMMIT`) and the commit's date. Set by
/// build.rs.
pub(crate) const VERSION: &str = env!("PLEG_VERSION");

/// pleg: a node-level Pod Lifecycle Event Generator.
#[derive(Debug, Parser)]
#[command(name = "pleg", version = VERSION, about, after_help = AFTER_HELP, propagate_version = true)]
pub(crate) struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the node daemon: health probe and metrics over HTTP, event
    /// subscriptions over gRPC on a unix socket.
    Run(RunArgs),
    /// Show pod lifecycle events live, from the runtime or from a daemon.
    Watch(WatchArgs),
    /// Show the pods and containers pleg knows, like `crictl ps -a`.
    Pods(PodsArgs),
    /// Wait until a pod meets a condition, then print its status. Exit 0
    /// when met, 1 when not met within --timeout, 2 on a bad flag, 5 or 6
    /// when the runtime or the daemon cannot be reached, 7 on any other
    /// failure.
    Wait(WaitArgs),
    /// Monitor how the selected pods and containers recover after they die
    /// (a chaos run): live progress, then a table (or one JSON document).
    /// Exit 0 when everything that died recovered (or nothing died), 1 when
    /// anything did not recover within --timeout, 2 on a bad flag, 5 or 6
    /// when the runtime or the daemon cannot be reached, 7 when the monitor
    /// could not watch to the end (events were lost) though all it saw
    /// recovered.
    Monitor(MonitorArgs),
    /// Print a shell completion script to stdout, such as
    /// `pleg completions bash > /etc/bash_completion.d/pleg`.
    Completions(CompletionsArgs),
    /// Print the man page, pleg(1), to stdout as roff (`pleg man | man -l -`);
    /// with --dir, write it and one page per command (pleg-run.1,
    /// pleg-watch.1, ...) into that directory instead, and print the paths
    /// written.
    Man(ManArgs),
}

/// The shells `pleg completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShellArg {
    /// Bash: source the script, or put it in `/etc/bash_completion.d/pleg`.
    Bash,
    /// Zsh: put the script in a directory of `$fpath` as `_pleg`.
    Zsh,
    /// Fish: put the script in `~/.config/fish/completions/pleg.fish`.
    Fish,
}

/// `pleg completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: ShellArg,
}

/// `pleg man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write pleg.1 and one page per command into this directory (created
    /// when missing) instead of printing pleg(1).
    #[arg(long, env = "PLEG_MAN_DIR", value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// Generator mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// The runtime's event stream, with relisting as a safety net; falls back
    /// to relisting when the runtime has no stream, and back again.
    Evented,
    /// Relisting only.
    Generic,
}

/// How to reach and watch the runtime.
#[derive(Debug, Args, Clone)]
pub(crate) struct RuntimeArgs {
    /// CRI runtime endpoint: <unix:///path> or a bare socket path.
    #[arg(long, env = "PLEG_RUNTIME_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_parser = parse_endpoint)]
    pub runtime_endpoint: String,
    /// evented (the runtime's event stream, relisting as a safety net) or
    /// generic (relisting only). Default: evented for `run`; generic for
    /// `watch` and `pods` reading the runtime themselves (no daemon answers),
    /// so that they never take events from a daemon's stream.
    #[arg(long, env = "PLEG_MODE", value_enum)]
    pub mode: Option<ModeArg>,
    /// Relist period when relisting is in charge (generic mode or fallback),
    /// such as 1s or 500ms; 100ms to 1h.
    #[arg(long, env = "PLEG_RELIST_PERIOD", default_value = "1s", value_parser = parse_duration)]
    pub relist_period: Duration,
    /// Period of the safety-net relists while the event stream works
    /// (evented mode), such as 5m; 100ms to 1h. A stream that loses events
    /// is relisted at --relist-period for a while instead.
    #[arg(long, env = "PLEG_EVENTED_RELIST_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub evented_relist_period: Duration,
    /// How long the runtime may go without answering (a relist, or in
    /// evented mode the liveness probe) before pleg reports unhealthy, in
    /// both modes; 1s to 24h, and longer than --relist-period.
    #[arg(long, env = "PLEG_RELIST_THRESHOLD", default_value = "3m", value_parser = parse_duration)]
    pub relist_threshold: Duration,
    /// Deadline of every call to the runtime; 1s to 1h.
    #[arg(long, env = "PLEG_RUNTIME_REQUEST_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub runtime_request_timeout: Duration,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Evented => Mode::Evented,
            ModeArg::Generic => Mode::Generic,
        }
    }
}

impl RuntimeArgs {
    /// Connects to the runtime; with `wait`, retries until it answers.
    pub(crate) async fn connect(&self, wait: bool) -> Result<std::sync::Arc<CriRuntime>, Failure> {
        let config = self.cri_config();
        let connected = if wait {
            CriRuntime::connect_retrying(config).await
        } else {
            CriRuntime::connect(config).await
        };
        connected.map_err(|e| {
            if e.is_retryable() {
                Failure::new(
                    Exit::RuntimeUnavailable,
                    anyhow::anyhow!("{e} (use --wait to wait for it)"),
                )
            } else {
                Failure::new(Exit::Usage, e)
            }
        })
    }

    /// The CRI client configuration.
    pub(crate) fn cri_config(&self) -> CriConfig {
        CriConfig::new(&self.runtime_endpoint).with_request_timeout(self.runtime_request_timeout)
    }

    /// The mode: the one given, else `default`.
    pub(crate) fn mode_or(&self, default: ModeArg) -> Mode {
        Mode::from(self.mode.unwrap_or(default))
    }

    /// The generator configuration in `mode`, checked: every bound `run`
    /// relies on, so that `--check-config` accepts exactly what `run`
    /// accepts.
    pub(crate) fn config(&self, mode: Mode) -> Result<Config, Failure> {
        let usage = |e: String| Failure::new(Exit::Usage, anyhow::anyhow!(e));
        in_range("--relist-period", self.relist_period, RELIST_PERIOD_RANGE).map_err(usage)?;
        in_range(
            "--evented-relist-period",
            self.evented_relist_period,
            RELIST_PERIOD_RANGE,
        )
        .map_err(usage)?;
        in_range(
            "--relist-threshold",
            self.relist_threshold,
            RELIST_THRESHOLD_RANGE,
        )
        .map_err(usage)?;
        in_range(
            "--runtime-request-timeout",
            self.runtime_request_timeout,
            REQUEST_TIMEOUT_RANGE,
        )
        .map_err(usage)?;
        if self.relist_threshold <= self.relist_period {
            return Err(usage(format!(
                "--relist-threshold {} must be longer than --relist-period {}: pleg would report unhealthy between relists",
                pleg::duration::format(self.relist_threshold),
                pleg::duration::format(self.relist_period)
            )));
        }
        let generic = RelistDuration::new(self.relist_period, self.relist_threshold);
        // The threshold holds in evented mode too: between the safety-net
        // relists, the liveness probe keeps health current.
        let evented = RelistDuration::new(self.evented_relist_period, self.relist_threshold);
        let config = Config::default()
            .with_mode(mode)
            .with_relist(generic)
            .with_evented_relist(evented)
            .with_request_timeout(self.runtime_request_timeout);
        config.validate().map_err(|e| usage(e.to_string()))?;
        Ok(config)
    }
}

/// `--relist-period`: 100 ms to 1 h.
const RELIST_PERIOD_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// `--relist-threshold`: 1 s to 24 h.
const RELIST_THRESHOLD_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));
/// `--runtime-request-timeout`: 1 s to 1 h.
const REQUEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// `--crash-loop-window`: 1 s to 24 h.
pub(crate) const CRASH_LOOP_WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// Checks a duration flag against its range, naming the flag.
pub(crate) fn in_range(
    flag: &str,
    value: Duration,
    (min, max): (Duration, Duration),
) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{flag} {}: out of range; it must be between {} and {}",
            pleg::duration::format(value),
            pleg::duration::format(min),
            pleg::duration::format(max)
        ));
    }
    Ok(())
}

/// Log output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `pleg run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The runtime.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Address of the HTTP health probe and metrics (/healthz, /livez,
    /// /readyz, /metrics). Loopback by default.
    #[arg(long, env = "PLEG_HEALTH_ADDR", default_value = "127.0.0.1:10258")]
    pub health_addr: String,
    /// Unix socket of the gRPC subscription API, created with mode 0600 and
    /// removed on exit; an empty value turns the API off.
    #[arg(long, env = "PLEG_GRPC_SOCKET", default_value = DEFAULT_GRPC_SOCKET)]
    pub grpc_socket: String,
    /// Give the gRPC socket to this group, mode 0660 (default: mode 0600,
    /// the daemon's user only).
    #[arg(long, env = "PLEG_GRPC_SOCKET_GROUP", value_name = "NAME")]
    pub grpc_socket_group: Option<String>,
    /// Also let this user ID use the gRPC socket (repeatable; a
    /// comma-separated list in the environment). When given, the socket is
    /// mode 0666 and every connection's peer credentials are checked: root,
    /// the daemon's user, these users and the socket group's members are
    /// let in; anyone else's connection is closed.
    #[arg(
        long = "grpc-allow-uid",
        env = "PLEG_GRPC_ALLOW_UID",
        value_name = "UID",
        value_delimiter = ','
    )]
    pub grpc_allow_uids: Vec<u32>,
    /// How long an HTTP client has to send a request's headers before its
    /// connection is closed.
    #[arg(long, env = "PLEG_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// The most HTTP connections open at once; at the cap the oldest idle
    /// one is closed to make room.
    #[arg(long, env = "PLEG_HTTP_MAX_CONNECTIONS", default_value_t = pleg::server::http::DEFAULT_MAX_CONNECTIONS, value_parser = parse_max_connections)]
    pub http_max_connections: usize,
    /// The most gRPC `Watch` streams open at once; past it a `Watch` fails
    /// with `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "PLEG_GRPC_MAX_WATCHES", default_value_t = grpc::DEFAULT_MAX_WATCHES)]
    pub grpc_max_watches: usize,
    /// The largest queue capacity one `Watch` may ask for, in events (at
    /// most 65536); a larger one is `INVALID_ARGUMENT`.
    #[arg(long, env = "PLEG_GRPC_MAX_CAPACITY", default_value_t = grpc::DEFAULT_MAX_CAPACITY)]
    pub grpc_max_capacity: usize,
    /// The sum of the queue capacities of the open `Watch` streams at most,
    /// in events; a `Watch` that does not fit fails with `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "PLEG_GRPC_MAX_QUEUED_EVENTS", default_value_t = grpc::DEFAULT_MAX_QUEUED_EVENTS)]
    pub grpc_max_queued_events: usize,
    /// How often the gRPC server pings an idle connection (HTTP/2 PING).
    #[arg(long, env = "PLEG_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed and
    /// its `Watch` streams freed.
    #[arg(long, env = "PLEG_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Items (events and stream-gap Resyncs) the replay ring keeps, so that a
    /// `Watch` that reconnects with its epoch and last seq gets what it
    /// missed; 0 keeps none; at most 1000000. About 280 bytes each.
    #[arg(long, env = "PLEG_REPLAY_EVENTS", default_value_t = pleg::hub::DEFAULT_REPLAY_EVENTS)]
    pub replay_events: usize,
    /// Prefix for every metric name (kubelet_ gives the kubelet's full names).
    #[arg(long, env = "PLEG_METRICS_PREFIX", default_value = "")]
    pub metrics_prefix: String,
    /// Failed exits (a non-zero code, on rising attempts of one container
    /// name) within --crash-loop-window that make a pod's health failed,
    /// for a crash loop, in the daemon's pod listings and other answers;
    /// 1 to 100.
    #[arg(long, env = "PLEG_CRASH_LOOP_EXITS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub crash_loop_exits: u16,
    /// The window of --crash-loop-exits; 1s to 24h.
    #[arg(long, env = "PLEG_CRASH_LOOP_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub crash_loop_window: Duration,
    /// Log format.
    #[arg(long, env = "PLEG_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing
    /// filter such as pleg=debug).
    #[arg(long, env = "PLEG_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// Check the flags and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl RunArgs {
    /// The gRPC limits, checked.
    pub(crate) fn grpc_limits(&self) -> Result<grpc::Limits, Failure> {
        let limits = grpc::Limits::default()
            .with_max_watches(self.grpc_max_watches)
            .with_max_capacity(self.grpc_max_capacity)
            .with_max_queued_events(self.grpc_max_queued_events)
            .with_keepalive(self.grpc_keepalive_interval, self.grpc_keepalive_timeout);
        limits
            .validate()
            .map_err(|e| Failure::new(Exit::Usage, e))?;
        Ok(limits)
    }
}

/// Which events to show.
#[derive(Debug, Args, Clone)]
pub(crate) struct FilterArgs {
    /// Only pods in this namespace.
    #[arg(long, short = 'n', env = "PLEG_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only this pod UID (repeatable).
    #[arg(long = "pod-uid")]
    pub pod_uids: Vec<String>,
    /// Only pods with this label, key=value (repeatable; all must match).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only pods whose labels satisfy this Kubernetes label selector
    /// (`kubectl`'s syntax: `app in (web,db),tier!=canary,!legacy`); every
    /// other filter must hold too.
    #[arg(long, value_parser = parse_selector)]
    pub selector: Option<LabelSelector>,
    /// Only pods whose whole namespace matches this regex.
    #[arg(long, value_parser = |s: &str| parse_pattern("namespace regex", s))]
    pub namespace_regex: Option<Pattern>,
    /// Only pods whose whole name matches this regex.
    #[arg(long, value_parser = |s: &str| parse_pattern("name regex", s))]
    pub name_regex: Option<Pattern>,
    /// Only these event types (repeatable): `ContainerStarted`, `ContainerDied`,
    /// `ContainerRemoved`, `PodSync`, `ContainerChanged`, `ConditionMet`.
    #[arg(long = "type", value_parser = parse_event_type)]
    pub kinds: Vec<EventType>,
    /// Also show `ContainerChanged` (off by default, like the kubelet).
    #[arg(long)]
    pub include_changed: bool,
}

impl FilterArgs {
    /// The library filter.
    pub(crate) fn filter(&self) -> Filter {
        let mut filter = Filter::all().with_container_changed(
            self.include_changed || self.kinds.contains(&EventType::ContainerChanged),
        );
        if !self.pod_uids.is_empty() {
            filter = filter.with_pod_uids(self.pod_uids.iter().map(PodUid::new));
        }
        if let Some(namespace) = &self.namespace {
            filter = filter.with_namespace(namespace);
        }
        for (key, value) in &self.labels {
            filter = filter.with_label(key, value);
        }
        if !self.kinds.is_empty() {
            filter = filter.with_kinds(self.kinds.iter().copied());
        }
        let mut selector = PodSelector::everything();
        if let Some(labels) = &self.selector {
            selector = selector.with_labels(labels.clone());
        }
        if let Some(pattern) = &self.namespace_regex {
            selector = selector.with_namespace_pattern(pattern.clone());
        }
        if let Some(pattern) = &self.name_regex {
            selector = selector.with_name_pattern(pattern.clone());
        }
        filter.with_selector(selector)
    }
}

/// Where `watch` and `pods` read from, and how they print.
#[derive(Debug, Args)]
pub(crate) struct SourceArgs {
    /// The runtime (read only when no daemon answers).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Read from the daemon at this gRPC socket, and only from it: fail
    /// (exit 6) if it does not answer.
    #[arg(long, env = "PLEG_DAEMON")]
    pub daemon: Option<String>,
    /// The daemon's gRPC socket to use when it answers; otherwise the
    /// command reads the runtime itself.
    #[arg(long, env = "PLEG_GRPC_SOCKET", default_value = DEFAULT_GRPC_SOCKET)]
    pub grpc_socket: String,
    /// text for people, json for scripts.
    #[arg(
        long,
        short = 'o',
        env = "PLEG_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: output::Format,
    /// Wait for the runtime (or daemon) to come up instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Log level on stderr.
    #[arg(long, env = "PLEG_LOG_LEVEL", default_value = "warn", value_parser = parse_log_level)]
    pub log_level: String,
}

/// The daemon's default gRPC socket (`pleg run --grpc-socket`).
pub(crate) const DEFAULT_GRPC_SOCKET: &str = "/run/pleg/pleg.sock";

/// Where `watch` and `pods` read from, as [`SourceArgs::source`] decided.
#[derive(Debug)]
pub(crate) enum Source {
    /// A running daemon, through its gRPC API.
    Daemon(pleg::server::grpc::Client),
    /// The runtime, with a generator of the command's own in this mode.
    Runtime(Mode),
}

/// A socket flag's path (`unix://` accepted).
fn socket_path(raw: &str) -> &std::path::Path {
    std::path::Path::new(raw.trim_start_matches("unix://"))
}

impl SourceArgs {
    /// Decides where to read from, and says so on stderr in one line:
    /// the daemon named by `--daemon` (which must answer); else the daemon
    /// at `--grpc-socket` if it answers; else the runtime, relisting
    /// (`generic`) unless `--mode` says otherwise. On containerd 1.7 each
    /// runtime event goes to one stream only, so a second evented consumer
    /// would take events from the daemon's.
    /// `one_relist`: the command lists once (`pods`) and never streams.
    pub(crate) async fn source(&self, what: &str, one_relist: bool) -> Result<Source, Failure> {
        if let Some(raw) = &self.daemon {
            let socket = socket_path(raw);
            let client = self.connect_daemon(socket).await?;
            eprintln!("pleg: {what} from the daemon at {}", socket.display());
            return Ok(Source::Daemon(client));
        }
        let socket = socket_path(&self.grpc_socket);
        if !self.grpc_socket.is_empty() {
            match pleg::server::grpc::Client::connect(socket).await {
                Ok(client) => {
                    eprintln!("pleg: {what} from the daemon at {}", socket.display());
                    return Ok(Source::Daemon(client));
                }
                Err(e) => tracing::debug!(error = %e, "no daemon; reading the runtime"),
            }
        }
        let mode = if one_relist {
            Mode::Generic
        } else {
            self.runtime.mode_or(ModeArg::Generic)
        };
        let endpoint = &self.runtime.runtime_endpoint;
        if one_relist {
            eprintln!(
                "pleg: {what} from the runtime at {endpoint} by one relist (no daemon answers at {})",
                socket.display()
            );
        } else if mode == Mode::Generic {
            eprintln!(
                "pleg: {what} from the runtime at {endpoint} by relisting (generic mode; no daemon answers at {})",
                socket.display()
            );
        } else {
            eprintln!(
                "pleg: {what} from the runtime at {endpoint} through its event stream (evented mode, as asked; \
                 on containerd 1.7 a running daemon would lose the events this command takes)"
            );
        }
        Ok(Source::Runtime(mode))
    }

    /// Connects to the daemon; with `--wait`, retries until it answers.
    pub(crate) async fn connect_daemon(
        &self,
        socket: &std::path::Path,
    ) -> Result<pleg::server::grpc::Client, Failure> {
        loop {
            match pleg::server::grpc::Client::connect(socket).await {
                Ok(client) => return Ok(client),
                Err(e) if self.wait => {
                    tracing::warn!(error = %e, "daemon not reachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(Failure::new(Exit::DaemonUnreachable, e)),
            }
        }
    }
}

/// Flags of `pleg watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Runtime or daemon, output.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Which events.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print one terminal report per end of a selected pod (Succeeded,
    /// Failed or Deleted, with every container's exit code and reason) in
    /// place of the events.
    #[arg(long)]
    pub terminal: bool,
    /// Start with the current state of every selected pod (each line marked
    /// initial), then a Synced line naming the epoch and seq it is complete
    /// as of, then live events.
    #[arg(long)]
    pub initial: bool,
    /// Resume a daemon's watch after this point (the `epoch` and `seq` of
    /// the last line a watch printed, as EPOCH:SEQ): what followed it is
    /// printed first, if the daemon's replay ring still holds it; otherwise
    /// a Resync line says why (and --initial's state follows). Needs a
    /// daemon.
    #[arg(long, value_name = "EPOCH:SEQ", value_parser = parse_resume_token)]
    pub since: Option<pleg::hub::ResumeToken>,
}

fn parse_resume_token(s: &str) -> Result<pleg::hub::ResumeToken, String> {
    s.parse()
        .map_err(|e: pleg::hub::ParseResumeTokenError| e.to_string())
}

/// Flags of `pleg monitor`.
#[derive(Debug, Args)]
pub(crate) struct MonitorArgs {
    /// Runtime or daemon, output.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The pods to monitor: a Kubernetes label selector (`kubectl`'s
    /// syntax: `app in (web,db),tier!=canary`).
    #[arg(long, short = 'l', value_parser = parse_selector)]
    pub selector: Option<LabelSelector>,
    /// Only pods whose whole namespace matches this regex.
    #[arg(long, value_parser = |s: &str| parse_pattern("namespace regex", s))]
    pub namespace_regex: Option<Pattern>,
    /// Only pods whose whole name matches this regex.
    #[arg(long, value_parser = |s: &str| parse_pattern("name regex", s))]
    pub name_regex: Option<Pattern>,
    /// Only pods in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// How long to monitor at most (it ends early once everything that
    /// died has recovered).
    #[arg(long, default_value = "60s", value_parser = parse_wait_timeout)]
    pub timeout: std::time::Duration,
}

impl MonitorArgs {
    /// The selection.
    pub(crate) fn filter(&self) -> Filter {
        let mut selector = PodSelector::everything();
        if let Some(labels) = &self.selector {
            selector = selector.with_labels(labels.clone());
        }
        if let Some(pattern) = &self.namespace_regex {
            selector = selector.with_namespace_pattern(pattern.clone());
        }
        if let Some(pattern) = &self.name_regex {
            selector = selector.with_name_pattern(pattern.clone());
        }
        let filter = Filter::all().with_selector(selector);
        match &self.namespace {
            Some(namespace) => filter.with_namespace(namespace),
            None => filter,
        }
    }
}

/// Flags of `pleg wait`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("until").required(true).args(["running", "exited", "gone", "phase_not"])))]
pub(crate) struct WaitArgs {
    /// Runtime or daemon, output.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The pod's namespace.
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// The pod's name.
    #[arg(long)]
    pub name: String,
    /// Until this container (its latest attempt) runs.
    #[arg(long, value_name = "CONTAINER")]
    pub running: Option<String>,
    /// Until every container of the pod has exited.
    #[arg(long)]
    pub exited: bool,
    /// Until the pod is gone.
    #[arg(long)]
    pub gone: bool,
    /// Until the pod is in none of these phases (Pending, Running,
    /// Succeeded, Failed, Unknown), or gone.
    #[arg(long, value_delimiter = ',', value_parser = parse_phase)]
    pub phase_not: Vec<pleg::phase::PodPhase>,
    /// How long to wait.
    #[arg(long, default_value = "30s", value_parser = parse_wait_timeout)]
    pub timeout: std::time::Duration,
}

impl WaitArgs {
    /// The pod, by namespace and name.
    pub(crate) fn filter(&self) -> Result<Filter, Failure> {
        let named = PodSelector::named(&self.name).map_err(|e| Failure::new(Exit::Usage, e))?;
        Ok(Filter::all()
            .with_namespace(&self.namespace)
            .with_selector(named))
    }

    /// The condition.
    pub(crate) fn until(&self) -> pleg::wait::Until {
        use pleg::wait::Until;
        if let Some(container) = &self.running {
            Until::running(container)
        } else if self.exited {
            Until::AllExited
        } else if self.gone {
            Until::Gone
        } else {
            Until::not_in(self.phase_not.iter().copied())
        }
    }
}

fn parse_phase(raw: &str) -> Result<pleg::phase::PodPhase, String> {
    pleg::phase::PodPhase::ALL
        .iter()
        .copied()
        .find(|p| p.as_str().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| {
            let known: Vec<&str> = pleg::phase::PodPhase::ALL
                .iter()
                .map(|p| p.as_str())
                .collect();
            format!(
                "{raw:?}: unknown phase; expected one of {}",
                known.join(", ")
            )
        })
}

fn parse_wait_timeout(raw: &str) -> Result<std::time::Duration, String> {
    let d = pleg::duration::parse(raw).map_err(|e| format!("{raw:?}: {e}"))?;
    if d.is_zero() || d > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!(
            "{raw:?}: out of range; it must be between 1ns and 24h"
        ));
    }
    Ok(d)
}

/// Flags of `pleg pods`.
#[derive(Debug, Args)]
pub(crate) struct PodsArgs {
    /// Runtime or daemon, output.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only pods in this namespace.
    #[arg(long, short = 'n', env = "PLEG_NAMESPACE")]
    pub namespace: Option<String>,
}

/// How many log lines may wait for the writer before new ones are dropped
/// (and counted).
const LOG_QUEUE_LINES: usize = 16_384;

/// Logging set up by [`init_logging`]: keep it for as long as the process
/// logs; dropping it flushes the lines still queued.
pub(crate) struct Logging {
    /// Flushes the writer's queue when dropped.
    _guard: Option<tracing_appender::non_blocking::WorkerGuard>,
    /// Lines dropped because the queue was full.
    dropped: Option<tracing_appender::non_blocking::ErrorCounter>,
}

impl Logging {
    /// How many lines were dropped so far, as a source for a metric.
    pub(crate) fn dropped_lines(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let dropped = self.dropped.clone();
        move || dropped.as_ref().map_or(0, |d| d.dropped_lines() as u64)
    }
}

/// Sets up logging on stderr, through a non-blocking writer that drops
/// (and counts) lines rather than make the daemon wait on a slow stderr;
/// `RUST_LOG` overrides the level.
pub(crate) fn init_logging(level: &str, format: LogFormat) -> Logging {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("pleg-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_err() {
        // Someone else's subscriber is in place: nothing of ours to keep.
        return Logging {
            _guard: None,
            dropped: None,
        };
    }
    Logging {
        _guard: Some(guard),
        dropped: Some(dropped),
    }
}

/// Parses `250ms`, `1s`, `1.5s`, `3m`, `1h`, `1m30s` ([`pleg::duration::parse`]).
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    pleg::duration::parse(raw).map_err(|e| e.to_string())
}

fn parse_max_connections(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{raw:?}: expected a whole number of connections, at least 1"
        )),
    }
}

fn parse_endpoint(raw: &str) -> Result<String, String> {
    RuntimeEndpoint::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|e| e.to_string())
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{raw:?}: expected key=value")),
    }
}

fn parse_selector(raw: &str) -> Result<LabelSelector, String> {
    LabelSelector::parse(raw).map_err(|e| e.to_string())
}

fn parse_pattern(what: &'static str, raw: &str) -> Result<Pattern, String> {
    Pattern::new(what, raw).map_err(|e| e.to_string())
}

fn parse_event_type(raw: &str) -> Result<EventType, String> {
    EventType::from_name(raw).ok_or_else(|| {
        let known: Vec<&str> = EventType::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "{raw:?}: unknown event type; expected one of {}",
            known.join(", ")
        )
    })
}

fn parse_log_level(raw: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(raw)
        .map(|_| raw.to_string())
        .map_err(|e| format!("{raw:?}: not a log level or filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "5", "s", "-1s", "0s", "1d", "1.2.3s", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("5").err().as_deref(),
            Some("\"5\": missing unit; use ms, s, m or h")
        );
    }

    #[test]
    fn bad_flags_name_what_was_wrong() {
        let err = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("pleg").chain(args.iter().copied()))
                .err()
                .map(|e| (e.exit_code(), e.to_string()))
                .unwrap_or_default()
        };
        let (code, text) = err(&["run", "--relist-period", "5"]);
        assert_eq!(code, 2);
        assert!(
            text.contains("'5'") && text.contains("missing unit"),
            "{text}"
        );
        let (code, text) = err(&["run", "--frobnicate"]);
        assert_eq!(code, 2);
        assert!(text.contains("--frobnicate"), "{text}");
        let (_, text) = err(&["run", "--mode", "fast"]);
        assert!(text.contains("fast") && text.contains("evented"), "{text}");
        let (_, text) = err(&["run", "--runtime-endpoint", "tcp://x:1"]);
        assert!(text.contains("scheme tcp:// is not supported"), "{text}");
        let (_, text) = err(&["watch", "--type", "Exploded"]);
        assert!(text.contains("unknown event type"), "{text}");
        let (_, text) = err(&["watch", "--label", "novalue"]);
        assert!(text.contains("expected key=value"), "{text}");
    }

    #[test]
    fn the_evented_relist_period_is_five_minutes_unless_set_and_checked_for_range() {
        let run = |args: &[&str]| {
            let cli = Cli::try_parse_from(["pleg", "run"].into_iter().chain(args.iter().copied()))
                .expect("flags parse");
            let Command::Run(run) = cli.command else {
                panic!("run");
            };
            run.runtime.config(Mode::Evented)
        };
        let config = run(&[]).expect("the defaults");
        assert_eq!(config.evented_relist.relist_period, Duration::from_mins(5));
        let config = run(&["--evented-relist-period", "20s"]).expect("20s");
        assert_eq!(config.evented_relist.relist_period, Duration::from_secs(20));
        assert_eq!(
            config.evented_relist.relist_threshold,
            Duration::from_mins(3)
        );
        let failure = run(&["--evented-relist-period", "2h"]).expect_err("out of range");
        let text = failure.error.to_string();
        assert!(text.contains("--evented-relist-period"), "{text}");
    }
}
