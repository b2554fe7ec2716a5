//! `pleg completions` and `pleg man`: shell completion scripts and man
//! pages, generated from the clap definitions in [`super::Cli`], so that they
//! never drift from the flags `pleg` accepts.
//!
//! Neither reads the environment's `PLEG_…` variables nor needs a runtime:
//! both only write text.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CompletionsArgs, ManArgs, Outcome, ShellArg, VERSION};

/// The name completions and man pages are written for.
const BIN: &str = "pleg";

/// Prints the completion script for the shell asked for.
pub(crate) fn completions(args: &CompletionsArgs) -> Outcome {
    let shell = match args.shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    write_stdout(&script).with_context(|| format!("writing the {shell} completion script"))?;
    Ok(())
}

/// Prints pleg(1), or with `--dir` writes every page into that directory.
pub(crate) fn man(args: &ManArgs) -> Outcome {
    let Some(dir) = &args.dir else {
        let mut page = Vec::new();
        render(command(), &mut page).context("rendering pleg(1)")?;
        write_stdout(&page).context("writing pleg(1)")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the man page directory {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(command(), dir, &mut written)?;
    let mut listing = String::new();
    for path in &written {
        listing.push_str(&path.display().to_string());
        listing.push('\n');
    }
    write_stdout(listing.as_bytes()).context("listing the man pages written")?;
    Ok(())
}

/// The command tree the pages describe: without clap's `help` subcommand,
/// which has no page of its own (`--help` is on every page).
fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// The page of `command`, in roff.
fn render(command: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    clap_mangen::Man::new(command)
        // The commit's date: the same page for the same commit.
        .date(env!("PLEG_BUILD_DATE"))
        // Every page, a command's too, comes from this build of pleg.
        .source(format!("{BIN} {VERSION}"))
        .manual("pleg manual")
        .render(out)
}

/// Writes the page of `command` and of each subcommand, depth first, into
/// `dir` as `<name>.1` (`pleg.1`, `pleg-run.1`, ...), adding each path to
/// `written`.
fn write_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Outcome {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    render(command, &mut page).with_context(|| format!("rendering {name}(1)"))?;
    std::fs::write(&path, page)
        .with_context(|| format!("writing the man page {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// Writes all of `text` to stdout and flushes it.
fn write_stdout(text: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text)?;
    stdout.flush()
}
