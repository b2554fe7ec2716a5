//! How the CLI shows events and pods: aligned text lines for people (colour
//! only on a terminal), one JSON object per line for scripts, each line
//! flushed at once so that `pleg watch --output json | jq` is live.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pleg::model::ContainerState;
use pleg::server::grpc::PodListing;
use pleg::{Delivery, EventType, PodLifecycleEvent};
use serde_json::{Map, Value, json};

/// The output format of `pleg watch` and `pleg pods`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned text for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes deliveries to stdout in one format.
pub(crate) struct Printer {
    format: Format,
    colour: bool,
    out: std::io::Stdout,
    /// Set: print terminal reports in place of events (`--terminal`).
    terminal: Option<pleg::terminal::TerminalReports>,
}

impl Printer {
    /// A printer; `colour` only matters for text.
    pub(crate) fn new(format: Format, colour: bool) -> Self {
        Printer {
            format,
            colour,
            out: std::io::stdout(),
            terminal: None,
        }
    }

    /// Prints terminal reports in place of events from now on.
    pub(crate) fn reporting_terminations(mut self) -> Self {
        self.terminal = Some(pleg::terminal::TerminalReports::new());
        self
    }

    /// Whether it prints terminal reports.
    pub(crate) fn is_reporting_terminations(&self) -> bool {
        self.terminal.is_some()
    }

    /// Learns of a pod from its status (a late start: what a daemon lists).
    pub(crate) fn track(&mut self, status: &pleg::model::PodStatus) {
        if let Some(reports) = &mut self.terminal {
            reports.track(status);
        }
    }

    /// Prints one delivery and flushes.
    pub(crate) fn print(&mut self, delivery: &Delivery) -> std::io::Result<()> {
        if let (Some(reports), Delivery::Event(e)) = (&mut self.terminal, delivery) {
            let Some(report) = reports.observe(e) else {
                return Ok(());
            };
            let line = match self.format {
                Format::Text => report_line(&report),
                Format::Json => json_report(&report).to_string(),
            };
            let mut out = self.out.lock();
            writeln!(out, "{line}")?;
            return out.flush();
        }
        let line = match (self.format, delivery) {
            (Format::Text, Delivery::Event(e)) => text_line(e, self.colour),
            (Format::Text, Delivery::Initial(e)) => {
                format!("{}  (initial state)", text_line(e, self.colour))
            }
            (Format::Text, Delivery::Synced(token)) => format!(
                "{}  SYNCED: the state above is complete as of {token}; live events follow (resume with --since {token})",
                clock(SystemTime::now())
            ),
            (Format::Text, Delivery::Resync { missed, reason, .. }) => match reason {
                pleg::ResyncReason::StreamGap => format!(
                    "{}  RESYNC: the runtime's event stream lost at least {missed} events (another consumer of it?); state may have changed unseen",
                    clock(SystemTime::now())
                ),
                pleg::ResyncReason::EpochChanged => format!(
                    "{}  RESYNC: the daemon restarted since the resume point; what happened in between is unknown",
                    clock(SystemTime::now())
                ),
                pleg::ResyncReason::ReplayExpired => format!(
                    "{}  RESYNC: {missed} events after the resume point have left the daemon's replay ring (--replay-events); state may have changed unseen",
                    clock(SystemTime::now())
                ),
                _ => format!(
                    "{}  RESYNC: missed {missed} events; state may have changed unseen",
                    clock(SystemTime::now())
                ),
            },
            (Format::Json, Delivery::Event(e)) => json_event(e).to_string(),
            (Format::Json, Delivery::Initial(e)) => {
                let mut v = json_event(e);
                if let Value::Object(o) = &mut v {
                    o.insert("initial".into(), true.into());
                }
                v.to_string()
            }
            (Format::Json, Delivery::Synced(token)) => json!({
                "time": rfc3339(SystemTime::now()),
                "type": "Synced",
                "epoch": token.epoch.as_str(),
                "seq": token.seq,
            })
            .to_string(),
            (
                Format::Json,
                Delivery::Resync {
                    missed,
                    reason,
                    seq,
                    ..
                },
            ) => {
                let mut v = json!({
                    "time": rfc3339(SystemTime::now()),
                    "type": "Resync",
                    "missed": missed,
                    "reason": reason.as_str(),
                });
                if let (Value::Object(o), Some(seq)) = (&mut v, seq) {
                    o.insert("seq".into(), (*seq).into());
                }
                v.to_string()
            }
            // A newer kind of delivery: say what it is rather than nothing.
            (_, other) => format!("{other:?}"),
        };
        let mut out = self.out.lock();
        writeln!(out, "{line}")?;
        out.flush()
    }
}

/// One terminal report on one line: when, which pod, how it ended, and
/// each container's code and reason.
fn report_line(r: &pleg::terminal::TerminalReport) -> String {
    let containers: Vec<String> = r
        .containers
        .iter()
        .map(|c| {
            let code = c
                .exit_code
                .map_or_else(|| "?".to_owned(), |code| code.to_string());
            match (c.exited, c.reason.as_deref().filter(|r| !r.is_empty())) {
                (false, _) => format!("{}=running", c.name),
                (true, Some(reason)) => format!("{}={code} ({reason})", c.name),
                (true, None) => format!("{}={code}", c.name),
            }
        })
        .collect();
    format!(
        "{}  {}/{}  {}  {}",
        clock(r.at),
        r.pod.namespace,
        r.pod.name,
        r.phase.as_str(),
        containers.join(", ")
    )
}

fn json_report(r: &pleg::terminal::TerminalReport) -> Value {
    let time = |t: Option<SystemTime>| t.map_or(Value::Null, |t| rfc3339(t).into());
    json!({
        "time": rfc3339(r.at),
        "type": "TerminalReport",
        "namespace": r.pod.namespace,
        "pod": r.pod.name,
        "pod_uid": r.pod.uid.to_string(),
        "phase": r.phase.as_str(),
        "exit_code": r.exit_code(),
        "containers": r.containers.iter().map(|c| json!({
            "name": c.name,
            "id": c.id.to_string(),
            "attempt": c.attempt,
            "exited": c.exited,
            "exit_code": c.exit_code,
            "reason": c.reason,
            "started_at": time(c.started_at),
            "finished_at": time(c.finished_at),
        })).collect::<Vec<_>>(),
    })
}

/// `HH:MM:SS.mmm` in UTC.
fn clock(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// One aligned line: time, namespace/pod, container#attempt, event, exit
/// code and reason, source.
pub(crate) fn text_line(e: &Arc<PodLifecycleEvent>, colour: bool) -> String {
    let container = e
        .container
        .as_ref()
        .map_or_else(|| "-".into(), |c| format!("{}#{}", c.name, c.attempt));
    let exit = match (e.exit_code, &e.reason) {
        (Some(code), Some(reason)) => format!("exit={code} reason={reason}"),
        (Some(code), None) => format!("exit={code}"),
        (None, Some(reason)) => format!("reason={reason}"),
        (None, None) => String::new(),
    };
    let kind = format!("{:<17}", e.kind.as_str());
    let kind = if colour {
        let code = match e.kind {
            EventType::ContainerStarted => "32",
            EventType::ContainerDied => "31",
            EventType::ContainerRemoved => "90",
            EventType::ConditionMet => "36",
            _ => "33",
        };
        format!("\x1b[{code}m{kind}\x1b[0m")
    } else {
        kind
    };
    format!(
        "{}  {:<18} {:<10} {kind} {:<26} {}",
        clock(e.observed_at),
        format!("{}/{}", e.pod.namespace, e.pod.name),
        container,
        exit,
        e.source.as_str()
    )
}

/// The JSON object of one event (the fields `pleg watch --output json`
/// documents; absent values are left out).
pub(crate) fn json_event(e: &PodLifecycleEvent) -> Value {
    let mut o = Map::new();
    o.insert("time".into(), rfc3339(e.observed_at).into());
    o.insert("type".into(), e.kind.as_str().into());
    o.insert("pod_uid".into(), e.pod.uid.as_str().into());
    o.insert("pod_name".into(), e.pod.name.clone().into());
    o.insert("pod_namespace".into(), e.pod.namespace.clone().into());
    if let Some(c) = &e.container {
        o.insert("container_id".into(), c.id.as_str().into());
        o.insert("container_name".into(), c.name.clone().into());
        o.insert("attempt".into(), c.attempt.into());
        o.insert(
            "container_kind".into(),
            match c.kind {
                pleg::model::EntryKind::Sandbox => "sandbox",
                pleg::model::EntryKind::Container => "container",
            }
            .into(),
        );
    }
    if let Some(code) = e.exit_code {
        o.insert("exit_code".into(), code.into());
    }
    if let Some(reason) = &e.reason {
        o.insert("reason".into(), reason.clone().into());
    }
    o.insert("source".into(), e.source.as_str().into());
    if let Some(t) = e.started_at {
        o.insert("started_at".into(), rfc3339(t).into());
    }
    if let Some(t) = e.finished_at {
        o.insert("finished_at".into(), rfc3339(t).into());
    }
    if let Some(t) = e.runtime_time {
        o.insert("runtime_time".into(), rfc3339(t).into());
    }
    if let Some(seq) = e.seq() {
        o.insert("seq".into(), seq.into());
    }
    Value::Object(o)
}

/// RFC 3339 in UTC with nanoseconds: `2026-11-22T00:21:22.649123456Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let (year, month, day) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A short form of a runtime ID, like crictl's 13 characters.
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

fn age(since: Option<SystemTime>) -> String {
    match since.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        None => "-".into(),
        Some(d) => {
            let s = d.as_secs();
            if s < 60 {
                format!("{s}s")
            } else if s < 3600 {
                format!("{}m", s / 60)
            } else if s < 86_400 {
                format!("{}h", s / 3600)
            } else {
                format!("{}d", s / 86_400)
            }
        }
    }
}

/// The pods as a table, grouped by pod, like `crictl ps -a`.
pub(crate) fn pods_table(pods: &[PodListing]) -> String {
    let mut out = String::new();
    if pods.is_empty() {
        out.push_str("no pods\n");
        return out;
    }
    for p in pods {
        let s = &p.status;
        let ready = p.health().to_string();
        let _ = writeln!(
            out,
            "{}/{}  uid={}  {}{}",
            s.meta.namespace,
            s.meta.name,
            s.meta.uid,
            ready,
            if s.ips.is_empty() {
                String::new()
            } else {
                format!("  ips={}", s.ips.join(","))
            }
        );
        if let Some(error) = &p.error {
            let _ = writeln!(out, "  ! last status fetch failed: {error}");
        }
        let _ = writeln!(
            out,
            "  {:<13}  {:<20} {:>7}  {:<8} {:<17} {:>5}  {:<10} AGE",
            "CONTAINER", "NAME", "ATTEMPT", "STATE", "LAST EVENT", "EXIT", "REASON"
        );
        let rows = s
            .sandboxes
            .iter()
            .map(|c| (c, true))
            .chain(s.containers.iter().map(|c| (c, false)));
        for (c, sandbox) in rows {
            let last = p
                .last_events
                .iter()
                .find(|e| e.id == c.id)
                .map_or("-", |e| e.kind.as_str());
            let state = match (sandbox, c.state) {
                (true, ContainerState::Running) => "ready",
                (true, ContainerState::Exited) => "notready",
                (_, state) => state.as_str(),
            };
            let name = if sandbox {
                format!("(sandbox) {}", c.name)
            } else {
                c.name.clone()
            };
            let _ = writeln!(
                out,
                "  {:<13}  {:<20} {:>7}  {:<8} {:<17} {:>5}  {:<10} {}",
                short(c.id.as_str()),
                name,
                c.attempt,
                state,
                last,
                c.exit_code.map_or_else(|| "-".into(), |x| x.to_string()),
                c.reason.as_deref().unwrap_or("-"),
                age(c.started_at.or(c.created_at)),
            );
        }
    }
    out
}

/// The pods as JSON (one array).
pub(crate) fn pods_json(pods: &[PodListing]) -> Value {
    let entry = |c: &pleg::model::Container, last: Option<&pleg::LastEvent>| {
        let mut o = Map::new();
        o.insert("id".into(), c.id.as_str().into());
        o.insert("name".into(), c.name.clone().into());
        o.insert("attempt".into(), c.attempt.into());
        o.insert("state".into(), c.state.as_str().into());
        for (key, t) in [
            ("created_at", c.created_at),
            ("started_at", c.started_at),
            ("finished_at", c.finished_at),
        ] {
            if let Some(t) = t {
                o.insert(key.into(), rfc3339(t).into());
            }
        }
        if let Some(code) = c.exit_code {
            o.insert("exit_code".into(), code.into());
        }
        if let Some(reason) = &c.reason {
            o.insert("reason".into(), reason.clone().into());
        }
        if !c.image.is_empty() {
            o.insert("image".into(), c.image.clone().into());
        }
        if let Some(last) = last {
            o.insert("last_event".into(), last.kind.as_str().into());
            o.insert("last_event_time".into(), rfc3339(last.at).into());
        }
        Value::Object(o)
    };
    Value::Array(
        pods.iter()
            .map(|p| {
                let s = &p.status;
                let last = |id: &pleg::ContainerId| p.last_events.iter().find(|e| e.id == *id);
                let mut o = Map::new();
                o.insert("uid".into(), s.meta.uid.as_str().into());
                o.insert("name".into(), s.meta.name.clone().into());
                o.insert("namespace".into(), s.meta.namespace.clone().into());
                let health = p.health();
                o.insert("phase".into(), health.phase.as_str().into());
                o.insert("health".into(), health.health.as_str().into());
                o.insert(
                    "health_reason".into(),
                    health.reason.map_or(Value::Null, |r| r.as_str().into()),
                );
                if let Some(message) = &health.message {
                    o.insert("health_message".into(), message.clone().into());
                }
                o.insert(
                    "labels".into(),
                    Value::Object(
                        s.meta
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone().into()))
                            .collect(),
                    ),
                );
                o.insert("ips".into(), s.ips.clone().into());
                o.insert(
                    "sandboxes".into(),
                    s.sandboxes.iter().map(|c| entry(c, last(&c.id))).collect(),
                );
                o.insert(
                    "containers".into(),
                    s.containers.iter().map(|c| entry(c, last(&c.id))).collect(),
                );
                if let Some(error) = &p.error {
                    o.insert("error".into(), error.clone().into());
                }
                Value::Object(o)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_has_nanoseconds_and_the_right_calendar_date() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_307_658, 510_814_771);
        assert_eq!(rfc3339(t), "2026-11-22T00:34:18.510814771Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }
}
