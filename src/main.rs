//! The `pleg` command line: the node daemon (`run`), the live event view
//! (`watch`) and the pod table (`pods`), plus `completions` and `man`, which
//! print what is generated from the flags. The demo is `pleg-demo`, in
//! pleg-testkit.
//!
//! Every flag has an environment variable (`PLEG_…`). Exit codes:
//! 0 success, 1 failure while running, 2 bad command line, 3 the health
//! address cannot be bound, 4 the gRPC socket cannot be bound, 5 the runtime
//! is not available (`watch`/`pods` without `--wait`), 6 the daemon is not
//! reachable (`--daemon`).

// One call is unsafe: the allocator's tuning in `malloc`, before any thread
// starts.
#![deny(unsafe_code)]

mod cli;
mod malloc;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Exit, Failure};

fn main() -> ExitCode {
    malloc::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 2.
            let _ = e.print();
            return if e.exit_code() == 0 {
                Exit::Success.into()
            } else {
                Exit::Usage.into()
            };
        }
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pleg: starting the tokio runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let outcome = match cli.command {
        Command::Run(args) => tokio.block_on(cli::run::run(args)),
        Command::Watch(args) => tokio.block_on(cli::watch::run(args)),
        Command::Pods(args) => tokio.block_on(cli::pods::run(args)),
        Command::Wait(args) => tokio.block_on(cli::wait::run(args)),
        Command::Monitor(args) => tokio.block_on(cli::monitor::run(args)),
        Command::Completions(args) => cli::generate::completions(&args),
        Command::Man(args) => cli::generate::man(&args),
    };
    // Nothing may keep the process alive after the command is done.
    tokio.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(()) => Exit::Success.into(),
        Err(Failure { code, error }) => {
            eprintln!("pleg: {error:#}");
            ExitCode::from(code)
        }
    }
}
