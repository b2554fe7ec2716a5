//! Errors written for people: an error and the causes behind it, on one line.
//!
//! Transport errors (tonic, hyper, the OS) often repeat their cause in their
//! own message; the chain skips a cause whose text the line already holds, so
//! that each part is said once.

use std::error::Error;

/// `error`, then each cause behind it, joined by `": "`.
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such socket");
/// let wrapped = std::io::Error::new(std::io::ErrorKind::Other, io);
/// assert_eq!(pleg::error::chain(&wrapped), "no such socket");
/// ```
pub fn chain(error: &(dyn Error + 'static)) -> String {
    chain_after(error.to_string(), error.source())
}

/// `head`, then `source` and each cause behind it, joined by `": "`; a cause
/// whose text the line already holds is left out.
pub fn chain_after(head: impl Into<String>, source: Option<&(dyn Error + 'static)>) -> String {
    let mut text = head.into();
    let mut source = source;
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |cause, text| {
                Some(Layer {
                    text,
                    cause: cause.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn causes_follow_the_error_each_said_once() {
        assert_eq!(
            chain(&layers(&["transport error", "connection refused"])),
            "transport error: connection refused"
        );
        assert_eq!(
            chain(&layers(&[
                "transport error: connection refused",
                "connection refused",
                "os error 111"
            ])),
            "transport error: connection refused: os error 111"
        );
        assert_eq!(chain(&layers(&["alone"])), "alone");
    }

    #[test]
    fn a_head_of_its_own_comes_first() {
        let error = layers(&["h2 protocol error", "broken pipe"]);
        assert_eq!(
            chain_after("Unavailable: error trying to connect", Some(&error)),
            "Unavailable: error trying to connect: h2 protocol error: broken pipe"
        );
        assert_eq!(
            chain_after("Unknown: h2 protocol error", Some(&error)),
            "Unknown: h2 protocol error: broken pipe"
        );
        assert_eq!(chain_after("NotFound: gone", None), "NotFound: gone");
    }
}
