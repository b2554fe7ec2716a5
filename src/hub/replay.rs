//! Sequence numbers, the run's epoch, and the replay ring that lets a
//! subscriber come back where it left off.
//!
//! Every item the hub publishes (an event, or the `Resync` of a gap in the
//! runtime's event stream) takes the next sequence number of the run,
//! starting at 1, except `ContainerChanged`: a hint delivered only to those
//! who ask for it, which stands after the numbered item before it and
//! carries no number of its own, so that a watch with the default filter
//! sees contiguous numbers. The run is named by an [`Epoch`], new at every start, so
//! that a sequence number is only ever compared with those of its own run.
//! The [`Ring`] keeps the last items published, bounded by count; a
//! subscriber that names a point still in the ring gets every item after
//! it, then the live ones, with nothing lost or repeated at the seam.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use crate::event::PodLifecycleEvent;
use crate::model::PodMeta;

/// The replay ring's default size, in items.
pub const DEFAULT_REPLAY_EVENTS: usize = 10_000;

/// The largest replay ring allowed, in items (about 270 MiB of events at
/// the very most, at about 280 bytes each; the default takes 2.7 MiB).
pub const MAX_REPLAY_EVENTS: usize = 1_000_000;

/// The longest epoch accepted from a client, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// The name of one run of a hub: sequence numbers count within it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A new epoch: 16 hexadecimal digits, from the process ID, the time and
    /// the standard library's per-process random hash keys, so that no two
    /// runs share one.
    pub(crate) fn new() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(now);
        Epoch(format!("{:016x}", hasher.finish()).into())
    }

    /// An epoch of this name, as a client read it from the wire or a
    /// command line.
    ///
    /// # Errors
    /// An empty name, one longer than [`MAX_EPOCH_LEN`] bytes, or one with
    /// a character other than an ASCII letter, digit, `-` or `_`.
    pub fn named(name: &str) -> Result<Self, ParseResumeTokenError> {
        if name.is_empty() {
            return Err(ParseResumeTokenError::new(name, "the epoch is empty"));
        }
        if name.len() > MAX_EPOCH_LEN {
            return Err(ParseResumeTokenError::new(
                name,
                format!(
                    "the epoch is {} bytes long, past the {MAX_EPOCH_LEN} allowed",
                    name.len()
                ),
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(ParseResumeTokenError::new(
                name,
                format!(
                    "the epoch holds {c:?}; only ASCII letters, digits, '-' and '_' are allowed"
                ),
            ));
        }
        Ok(Epoch(name.into()))
    }

    /// The epoch's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

/// Where a subscriber stands: it holds every item of run `epoch` up to and
/// including `seq` that its filter selects. Written `EPOCH:SEQ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResumeToken {
    /// The run.
    pub epoch: Epoch,
    /// The last sequence number held (0: nothing yet).
    pub seq: u64,
}

impl ResumeToken {
    /// A token.
    pub fn new(epoch: Epoch, seq: u64) -> Self {
        ResumeToken { epoch, seq }
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl FromStr for ResumeToken {
    type Err = ParseResumeTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((epoch, seq)) = s.rsplit_once(':') else {
            return Err(ParseResumeTokenError::new(
                s,
                "expected EPOCH:SEQ (the `epoch` and `seq` a watch printed)",
            ));
        };
        let epoch = Epoch::named(epoch).map_err(|e| ParseResumeTokenError::new(s, e.reason))?;
        let seq = seq.parse::<u64>().map_err(|e| {
            ParseResumeTokenError::new(s, format!("the sequence number {seq:?} is not a u64: {e}"))
        })?;
        Ok(ResumeToken { epoch, seq })
    }
}

/// A resume token or epoch that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("resume point {text:?}: {reason}")]
pub struct ParseResumeTokenError {
    text: String,
    reason: String,
}

impl ParseResumeTokenError {
    fn new(text: &str, reason: impl Into<String>) -> Self {
        ParseResumeTokenError {
            text: text.chars().take(80).collect(),
            reason: reason.into(),
        }
    }
}

/// One published item, as the ring keeps it.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    /// An event; its `seq` is set.
    Event(Arc<PodLifecycleEvent>),
    /// A `ContainerChanged` hint, unnumbered, published after item `after`.
    Hint {
        after: u64,
        event: Arc<PodLifecycleEvent>,
    },
    /// A gap in the runtime's event stream, for the subscribers of `pod`
    /// (of every pod when `None`).
    Gap {
        seq: u64,
        pod: Option<Arc<PodMeta>>,
        missed: u64,
    },
}

impl Item {
    /// Where the item stands in the run: the seq it carries, or (for a
    /// hint) the seq it follows, and whether it is a hint. Rising along
    /// the ring.
    fn key(&self) -> (u64, bool) {
        match self {
            Item::Event(e) => (e.seq().unwrap_or(0), false),
            Item::Hint { after, .. } => (*after, true),
            Item::Gap { seq, .. } => (*seq, false),
        }
    }
}

/// Where a resume point stands against the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Replay the ring from this index on (the ring's length: nothing to
    /// replay).
    From(usize),
    /// The items after the point have left the ring: this many of them
    /// are gone for good.
    Expired { missed: u64 },
    /// The point lies past the last item published.
    Ahead { last: u64 },
}

/// The last items published, bounded by count.
#[derive(Debug)]
pub(crate) struct Ring {
    items: VecDeque<Item>,
    limit: usize,
    /// The sequence number of the next item.
    next_seq: u64,
    /// The last numbered item the ring let go of (0: none yet).
    dropped: u64,
}

impl Ring {
    pub(crate) fn new(limit: usize) -> Self {
        Ring {
            items: VecDeque::with_capacity(limit.min(1024)),
            limit,
            next_seq: 1,
            dropped: 0,
        }
    }

    /// Takes the next sequence number. The caller pushes the item it names
    /// before it lets go of the ring, so the ring's numbered items stay
    /// contiguous.
    pub(crate) fn assign(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The last sequence number taken (0 before the first).
    pub(crate) fn last(&self) -> u64 {
        self.next_seq - 1
    }

    /// Keeps an item, forgetting the oldest past the limit.
    pub(crate) fn push(&mut self, item: Item) {
        if self.limit == 0 {
            self.forget(&item);
            return;
        }
        if self.items.len() == self.limit
            && let Some(oldest) = self.items.pop_front()
        {
            self.forget(&oldest);
        }
        self.items.push_back(item);
    }

    fn forget(&mut self, item: &Item) {
        if let (seq, false) = item.key() {
            self.dropped = seq;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The items from `index` on.
    pub(crate) fn from(&self, index: usize) -> impl Iterator<Item = &Item> {
        self.items.range(index.min(self.items.len())..)
    }

    /// Where a subscriber that holds everything up to `since` resumes:
    /// after the numbered item `since`, the hints that followed it
    /// included (a hint seen just before a disconnect may thus come
    /// again; a numbered item never does).
    pub(crate) fn lookup(&self, since: u64) -> Lookup {
        let last = self.last();
        if since > last {
            return Lookup::Ahead { last };
        }
        if since < self.dropped {
            // The numbered items `since + 1 ..= dropped` are gone.
            return Lookup::Expired {
                missed: self.dropped - since,
            };
        }
        Lookup::From(
            self.items
                .partition_point(|item| item.key() <= (since, false)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventSource, EventType};

    fn ring_with(limit: usize, items: u64) -> Ring {
        let mut ring = Ring::new(limit);
        for _ in 0..items {
            let seq = ring.assign();
            ring.push(Item::Gap {
                seq,
                pod: None,
                missed: 1,
            });
        }
        ring
    }

    fn seq_of(item: &Item) -> u64 {
        item.key().0
    }

    #[test]
    fn a_resume_point_just_inside_the_ring_replays_and_just_outside_expires() {
        // 25 items through a ring of 10: it holds 16..=25.
        let ring = ring_with(10, 25);
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.lookup(15), Lookup::From(0), "just inside: all ten");
        assert_eq!(
            ring.from(0).map(seq_of).collect::<Vec<_>>(),
            (16..=25).collect::<Vec<_>>()
        );
        assert_eq!(
            ring.lookup(14),
            Lookup::Expired { missed: 1 },
            "just outside: seq 15 is gone"
        );
        assert_eq!(ring.lookup(0), Lookup::Expired { missed: 15 });
        assert_eq!(ring.lookup(24), Lookup::From(9));
        assert_eq!(ring.lookup(25), Lookup::From(10), "up to date: nothing");
        assert_eq!(ring.lookup(26), Lookup::Ahead { last: 25 });
    }

    #[test]
    fn a_ring_of_zero_keeps_nothing_but_still_counts() {
        let ring = ring_with(0, 5);
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.last(), 5);
        assert_eq!(ring.lookup(5), Lookup::From(0));
        assert_eq!(ring.lookup(4), Lookup::Expired { missed: 1 });
        let empty = Ring::new(10);
        assert_eq!(empty.lookup(0), Lookup::From(0));
        assert_eq!(empty.lookup(1), Lookup::Ahead { last: 0 });
    }

    #[test]
    fn a_resume_replays_the_hints_after_the_point_and_none_before() {
        let pod = Arc::new(PodMeta::new("u", "p", "ns"));
        let changed = || {
            Arc::new(PodLifecycleEvent::new(
                pod.clone(),
                EventType::ContainerChanged,
                EventSource::Relist,
                std::time::SystemTime::UNIX_EPOCH,
            ))
        };
        let mut ring = Ring::new(100);
        let gap = |ring: &mut Ring| {
            let seq = ring.assign();
            ring.push(Item::Gap {
                seq,
                pod: None,
                missed: 1,
            });
        };
        gap(&mut ring); // 1
        ring.push(Item::Hint {
            after: 1,
            event: changed(),
        });
        gap(&mut ring); // 2
        ring.push(Item::Hint {
            after: 2,
            event: changed(),
        });
        assert_eq!(ring.lookup(0), Lookup::From(0));
        assert_eq!(ring.lookup(1), Lookup::From(1), "the hint after 1, then 2");
        assert_eq!(ring.lookup(2), Lookup::From(3), "the hint after 2");
        assert_eq!(ring.lookup(3), Lookup::Ahead { last: 2 });
        // Hints leaving the ring expire nothing; numbered items do.
        let mut small = Ring::new(2);
        gap(&mut small); // 1
        small.push(Item::Hint {
            after: 1,
            event: changed(),
        });
        small.push(Item::Hint {
            after: 1,
            event: changed(),
        });
        assert_eq!(small.lookup(0), Lookup::Expired { missed: 1 });
        assert_eq!(small.lookup(1), Lookup::From(0));
    }

    #[test]
    fn tokens_read_back_what_they_print_and_bad_ones_say_why() {
        let token = ResumeToken::new(Epoch::named("0123abcd").expect("valid"), 42);
        assert_eq!(token.to_string(), "0123abcd:42");
        assert_eq!("0123abcd:42".parse::<ResumeToken>(), Ok(token));
        for (bad, why) in [
            ("42", "expected EPOCH:SEQ"),
            (":42", "the epoch is empty"),
            ("abc:x", "is not a u64"),
            ("abc:-1", "is not a u64"),
            ("a b:1", "only ASCII letters"),
        ] {
            let err = bad.parse::<ResumeToken>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("{}:1", "a".repeat(MAX_EPOCH_LEN + 1));
        assert!(
            long.parse::<ResumeToken>()
                .expect_err("too long")
                .to_string()
                .contains("past the 64 allowed")
        );
    }

    #[test]
    fn every_run_has_an_epoch_of_its_own() {
        let a = Epoch::new();
        let b = Epoch::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert!(Epoch::named(a.as_str()).is_ok());
    }

    #[test]
    fn events_in_the_ring_keep_their_seq() {
        let mut ring = Ring::new(4);
        let pod = Arc::new(PodMeta::new("u", "p", "ns"));
        for _ in 0..6 {
            let seq = ring.assign();
            let event = PodLifecycleEvent::new(
                pod.clone(),
                EventType::ContainerStarted,
                EventSource::Relist,
                std::time::SystemTime::UNIX_EPOCH,
            )
            .with_seq(seq);
            ring.push(Item::Event(Arc::new(event)));
        }
        assert_eq!(
            ring.from(0).map(seq_of).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
    }
}
