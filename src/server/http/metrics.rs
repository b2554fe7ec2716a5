//! `/metrics`: the daemon's registry in the Prometheus text format 0.0.4.
//! The families and their names are in [`crate::metrics`].

use crate::server::Daemon;

/// Whether `prefix` can begin a Prometheus metric name
/// (`[a-zA-Z_:][a-zA-Z0-9_:]*`, or empty). [`Daemon::new`] replaces the
/// characters of an invalid prefix with `_`, so a CLI should refuse one
/// up front.
pub fn metrics_prefix_is_valid(prefix: &str) -> bool {
    prefix.chars().enumerate().all(|(i, c)| name_char(i, c))
}

fn name_char(position: usize, c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (position > 0 && c.is_ascii_digit())
}

/// `prefix` with every character a metric name cannot hold replaced by `_`.
pub(crate) fn sanitize_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .enumerate()
        .map(|(i, c)| if name_char(i, c) { c } else { '_' })
        .collect()
}

/// The text exposition of every family the daemon registered (see
/// [`crate::metrics`] for the list), each name with the daemon's prefix.
/// Counters are written under their exact names, so `# TYPE x_total
/// counter` is followed by `x_total` samples, as the 0.0.4 format has it;
/// there is no `OpenMetrics` `# EOF`.
pub fn render_metrics(daemon: &Daemon) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, daemon.registry());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_and_invalid_characters_replaced() {
        assert!(metrics_prefix_is_valid(""));
        assert!(metrics_prefix_is_valid("kubelet_"));
        assert!(metrics_prefix_is_valid("node:pleg_2_"));
        assert!(!metrics_prefix_is_valid("2pleg_"));
        assert!(!metrics_prefix_is_valid("my-pleg."));
        assert_eq!(sanitize_prefix("my-pleg."), "my_pleg_");
        assert_eq!(sanitize_prefix("2x"), "_x");
    }
}
