//! The probes' answers: kubelet-style check lines and verdicts, rendered
//! from [`Daemon::checks`] without a socket.

use std::fmt::Write as _;

use axum::http::StatusCode;

use crate::server::{Check, Daemon, Probe};

/// The path, and the word in the last line, of a probe.
pub(super) fn probe_name(probe: Probe) -> &'static str {
    match probe {
        Probe::Health => "healthz",
        Probe::Live => "livez",
        Probe::Ready => "readyz",
    }
}

/// How a probe was asked, from its query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// `?verbose`, with any value or none: list every check.
    pub verbose: bool,
    /// `?exclude=name`, repeatable: checks to skip.
    pub exclude: Vec<String>,
}

impl ProbeOptions {
    /// Reads `verbose` and `exclude` from a raw query string (without `?`);
    /// other parameters are ignored.
    pub fn from_query(query: Option<&str>) -> Self {
        let mut options = ProbeOptions::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "verbose" => options.verbose = true,
                "exclude" if !value.is_empty() => options.exclude.push(value.to_string()),
                _ => {}
            }
        }
        options
    }
}

/// A probe's answer: its status and `text/plain` body.
pub fn render_probe(daemon: &Daemon, probe: Probe, options: &ProbeOptions) -> (StatusCode, String) {
    render_checks(probe_name(probe), &daemon.checks(probe), options)
}

/// The answer for one check of a probe (`/healthz/pleg`), or `None` when
/// the probe has no check of that name. The last line names the check:
/// `pleg check failed`.
pub fn render_check(
    daemon: &Daemon,
    probe: Probe,
    name: &str,
    options: &ProbeOptions,
) -> Option<(StatusCode, String)> {
    let check = daemon.checks(probe).into_iter().find(|c| c.name == name)?;
    Some(render_checks(check.name, &[check], options))
}

fn render_checks(name: &str, checks: &[Check], options: &ProbeOptions) -> (StatusCode, String) {
    let mut every = String::new();
    let mut failing = String::new();
    for check in checks {
        if options.exclude.iter().any(|e| e == check.name) {
            let _ = writeln!(every, "[+]{} excluded: ok", check.name);
            continue;
        }
        // A reason spanning lines would break the one-line-per-check format.
        let line = check.line().replace(['\n', '\r'], " ");
        if !check.ok() {
            failing.push_str(&line);
            failing.push('\n');
        }
        every.push_str(&line);
        every.push('\n');
    }
    let unmatched: Vec<String> = options
        .exclude
        .iter()
        .filter(|e| !checks.iter().any(|c| c.name == e.as_str()))
        .map(|e| format!("{e:?}"))
        .collect();
    if !unmatched.is_empty() {
        let _ = writeln!(
            every,
            "warn: some health checks cannot be excluded: no matches for {}",
            unmatched.join(", ")
        );
    }
    if !failing.is_empty() {
        let mut body = if options.verbose { every } else { failing };
        let _ = writeln!(body, "{name} check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    if !options.verbose {
        return (StatusCode::OK, "ok".into());
    }
    let _ = writeln!(every, "{name} check passed");
    (StatusCode::OK, every)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, failure: Option<&str>) -> Check {
        Check {
            name,
            failure: failure.map(str::to_string),
            detail: String::new(),
        }
    }

    #[test]
    fn query_strings_set_verbose_with_any_value_and_collect_exclusions() {
        for query in [
            "verbose",
            "verbose=",
            "verbose=true",
            "verbose=1",
            "x=y&verbose",
        ] {
            assert!(ProbeOptions::from_query(Some(query)).verbose, "{query}");
        }
        assert!(!ProbeOptions::from_query(None).verbose);
        assert!(!ProbeOptions::from_query(Some("verbosity=1")).verbose);
        assert_eq!(
            ProbeOptions::from_query(Some("exclude=stream&exclude=runtime")).exclude,
            ["stream", "runtime"]
        );
    }

    #[test]
    fn a_failing_check_gives_its_line_and_the_probe_verdict() {
        let checks = [
            check(
                "pleg",
                Some("pleg was last seen active 3m5s ago; threshold is 3m0s"),
            ),
            check("runtime", None),
        ];
        let (status, body) = render_checks("healthz", &checks, &ProbeOptions::default());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "[-]pleg failed: pleg was last seen active 3m5s ago; threshold is 3m0s\nhealthz check failed\n"
        );
        let verbose = ProbeOptions {
            verbose: true,
            ..ProbeOptions::default()
        };
        let (_, body) = render_checks("healthz", &checks, &verbose);
        assert_eq!(
            body,
            "[-]pleg failed: pleg was last seen active 3m5s ago; threshold is 3m0s\n[+]runtime ok\nhealthz check failed\n"
        );
    }

    #[test]
    fn passing_checks_say_ok_or_list_themselves_when_verbose() {
        let checks = [check("pleg", None), check("runtime", None)];
        assert_eq!(
            render_checks("readyz", &checks, &ProbeOptions::default()),
            (StatusCode::OK, "ok".to_string())
        );
        let verbose = ProbeOptions {
            verbose: true,
            ..ProbeOptions::default()
        };
        assert_eq!(
            render_checks("readyz", &checks, &verbose).1,
            "[+]pleg ok\n[+]runtime ok\nreadyz check passed\n"
        );
    }

    #[test]
    fn excluded_checks_pass_and_unknown_exclusions_are_reported() {
        let checks = [check("pleg", None), check("runtime", Some("down\nreally"))];
        let options = ProbeOptions {
            verbose: true,
            exclude: vec!["runtime".into(), "nope".into()],
        };
        assert_eq!(
            render_checks("healthz", &checks, &options),
            (
                StatusCode::OK,
                "[+]pleg ok\n[+]runtime excluded: ok\nwarn: some health checks cannot be excluded: no matches for \"nope\"\nhealthz check passed\n"
                    .to_string()
            )
        );
        // A reason spanning lines stays on one line.
        let (_, body) = render_checks("healthz", &checks, &ProbeOptions::default());
        assert_eq!(
            body,
            "[-]runtime failed: down really\nhealthz check failed\n"
        );
    }
}
