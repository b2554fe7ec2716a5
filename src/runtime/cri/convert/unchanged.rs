//! A listing from the runtime's answers as bytes, keeping whole every pod
//! whose entries came in the same bytes as at the last relist.
//!
//! On an idle node nearly every pod is listed again byte for byte. Each
//! pod's entries are found and fingerprinted without decoding them
//! ([`super::super::wire`]); a pod whose fingerprint is the one it had at
//! the last listing is that listing's pod (the same `Arc`, which the diff
//! then passes over at once), and only the other pods are decoded and
//! converted, by the same rules as [`listing`]. A relist of an unchanged
//! node so allocates nothing per entry.
//!
//! The fingerprint of a pod is the sum of a 64-bit hash of each entry's
//! bytes (sandboxes and containers hashed apart, so that the sum does not
//! depend on the order the runtime lists them in), hashed again with the
//! number of each. The hash is seeded at random per process; a changed pod
//! is taken for unchanged only if its 64-bit fingerprint collides, which
//! happens about once in 2^64 changes.
//!
//! When every pod of the last listing was kept, the fingerprint of both
//! answers whole (the same sum over all their entries) is kept too, and
//! answers with that fingerprint are that listing again (the same `Arc`):
//! the relist of an idle node walks and hashes the bytes, and builds nothing.
//!
//! Whatever the general rules treat as special goes through them whole
//! (the answers decoded by prost and [`listing`]): an entry with an empty
//! ID, a sandbox without metadata or pod UID, a sandbox ID listed twice, a
//! container whose sandbox is not listed, or bytes the wire reader cannot
//! walk. A pod is kept for the next relist only if converting it counted
//! nothing (no unknown state, no repeated ID), so that what the runtime's
//! statistics count, they count at every relist, as [`listing`] does.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, OnceLock};

use prost::Message as _;

use super::{KnownMetas, listing, pods};
use crate::model::{ContainerState, Listing, Pod, PodUid, uid_hash};
use crate::runtime::CriMethod;
use crate::runtime::RuntimeStats;
use crate::runtime::cri::listed::{self, ListedContainer, ListedSandbox};
use crate::runtime::cri::wire;

/// The pods of the last listing with the fingerprints of their bytes.
#[derive(Debug, Default)]
pub(crate) struct ListedBytes {
    pods: hashbrown::HashTable<Kept>,
    /// The last listing with the fingerprint of both answers whole, when
    /// every one of its pods is kept: the same answers again (in any
    /// order) are that listing again.
    whole: Option<(u64, Listing)>,
}

#[derive(Debug)]
struct Kept {
    /// [`uid_hash`] of the pod's UID.
    hash: u64,
    fingerprint: u64,
    pod: Arc<Pod>,
}

impl ListedBytes {
    fn find(&self, hash: u64, uid: &PodUid, fingerprint: u64) -> Option<&Arc<Pod>> {
        self.pods
            .find(hash, |k| k.pod.meta.uid == *uid)
            .filter(|k| k.fingerprint == fingerprint)
            .map(|k| &k.pod)
    }

    /// How many pods are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }
}

/// A decoding failure, with the call whose answer it was in.
pub(crate) type DecodeFailure = (CriMethod, prost::DecodeError);

/// The listing of the answers of `ListPodSandbox` (`sandboxes`) and
/// `ListContainers` (`containers`), as [`listing`] gives it from their
/// decoded messages; `kept` holds the pods of the last one.
pub(crate) fn listing_from_answers(
    stats: &RuntimeStats,
    known: &mut KnownMetas,
    kept: &mut ListedBytes,
    sandboxes: &[u8],
    containers: &[u8],
) -> Result<Listing, DecodeFailure> {
    let general = |kept: &mut ListedBytes, known: &mut KnownMetas| {
        kept.pods.clear();
        kept.whole = None;
        let (sandboxes, containers) = listed::decode_answers(sandboxes, containers)?;
        Ok(listing(stats, known, sandboxes, containers))
    };
    let Some(answers) = Hashed::of(sandboxes, containers) else {
        return general(kept, known);
    };
    // An idle node: the same entries as last time, whatever their order.
    if let Some((fingerprint, listing)) = &kept.whole
        && *fingerprint == answers.fingerprint
    {
        return Ok(listing.clone());
    }
    let Some(grouped) = group(&answers) else {
        return general(kept, known);
    };

    let mut next = hashbrown::HashTable::with_capacity(grouped.pods.len());
    let mut reused: Vec<Arc<Pod>> = Vec::new();
    // The pods to decode: UID, its hash, fingerprint and number of entries.
    let mut changed: Vec<(PodUid, u64, u64, usize)> = Vec::new();
    let mut decode = vec![false; grouped.pods.len()];
    for (at, group) in grouped.pods.iter().enumerate() {
        let uid = PodUid::new(group.uid);
        let hash = uid_hash(&uid);
        let fingerprint = group.fingerprint();
        if let Some(pod) = kept.find(hash, &uid, fingerprint) {
            reused.push(pod.clone());
            next.insert_unique(
                hash,
                Kept {
                    hash,
                    fingerprint,
                    pod: pod.clone(),
                },
                |k| k.hash,
            );
        } else {
            decode[at] = true;
            changed.push((uid, hash, fingerprint, group.sandboxes + group.containers));
        }
    }
    let mut fresh_sandboxes: Vec<ListedSandbox> = Vec::new();
    for (_, entry) in grouped.sandboxes.iter().filter(|(at, _)| decode[*at]) {
        fresh_sandboxes
            .push(ListedSandbox::decode(*entry).map_err(|e| (CriMethod::ListPodSandbox, e))?);
    }
    let mut fresh_containers: Vec<ListedContainer> = Vec::new();
    for (_, entry) in grouped.containers.iter().filter(|(at, _)| decode[*at]) {
        fresh_containers
            .push(ListedContainer::decode(*entry).map_err(|e| (CriMethod::ListContainers, e))?);
    }
    let fresh = pods(stats, known, fresh_sandboxes, fresh_containers);
    let listing = Listing::of_distinct_pods(reused, fresh);
    known.keep(listing.pods().iter().map(|p| &p.meta));

    for (uid, hash, fingerprint, entries) in changed {
        if let Some(pod) = listing.get_hashed(&uid, hash)
            && counts_nothing(pod, entries)
        {
            next.insert_unique(
                hash,
                Kept {
                    hash,
                    fingerprint,
                    pod: pod.clone(),
                },
                |k| k.hash,
            );
        }
    }
    kept.pods = next;
    kept.whole = (kept.pods.len() == listing.len()).then(|| (answers.fingerprint, listing.clone()));
    Ok(listing)
}

/// Whether converting the pod counted nothing in the runtime's statistics:
/// every entry's state is known and none was folded into another.
fn counts_nothing(pod: &Pod, entries: usize) -> bool {
    pod.sandboxes.len() + pod.containers.len() == entries
        && pod
            .sandboxes
            .iter()
            .chain(&pod.containers)
            .all(|c| c.state != ContainerState::Unknown)
}

/// The answers' entries, each with the position of its pod in `pods`.
struct Grouped<'a> {
    pods: Vec<Group<'a>>,
    sandboxes: Vec<(usize, &'a [u8])>,
    containers: Vec<(usize, &'a [u8])>,
}

/// One pod of the answers.
struct Group<'a> {
    uid: &'a str,
    sandboxes: usize,
    containers: usize,
    /// The sum of its entries' hashes.
    sum: u64,
}

impl Group<'_> {
    fn fingerprint(&self) -> u64 {
        hasher().hash_one((self.sum, self.sandboxes, self.containers))
    }
}

fn hasher() -> &'static foldhash::quality::RandomState {
    static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SEED.get_or_init(foldhash::quality::RandomState::default)
}

/// Which list an entry came in, hashed with its bytes.
#[derive(Hash)]
enum Kind {
    Sandbox,
    Container,
}

fn entry_hash(kind: Kind, entry: &[u8]) -> u64 {
    hasher().hash_one((kind, entry))
}

type Lookup<'a> = HashMap<&'a str, usize, foldhash::fast::RandomState>;

/// The entries of both answers, each with its hash, and the fingerprint of
/// both answers whole (which does not depend on the order of their entries).
struct Hashed<'a> {
    sandboxes: Vec<(&'a [u8], u64)>,
    containers: Vec<(&'a [u8], u64)>,
    fingerprint: u64,
}

impl<'a> Hashed<'a> {
    /// `None` when the wire reader cannot walk the answers.
    fn of(sandboxes: &'a [u8], containers: &'a [u8]) -> Option<Self> {
        let hashed = |answer: &'a [u8], kind: fn() -> Kind| {
            wire::entries_map(answer, |entry| (entry, entry_hash(kind(), entry))).ok()
        };
        let sandboxes = hashed(sandboxes, || Kind::Sandbox)?;
        let containers = hashed(containers, || Kind::Container)?;
        let sum = |entries: &[(&[u8], u64)]| {
            entries
                .iter()
                .fold(0u64, |sum, (_, hash)| sum.wrapping_add(*hash))
        };
        let fingerprint = hasher().hash_one((
            sum(&sandboxes),
            sum(&containers),
            sandboxes.len(),
            containers.len(),
        ));
        Some(Hashed {
            sandboxes,
            containers,
            fingerprint,
        })
    }
}

/// The answers' entries grouped into pods (allocating nothing per pod or
/// entry but their places in a few vectors); `None` when anything in them
/// needs the general rules (see the module's documentation).
fn group<'a>(answers: &Hashed<'a>) -> Option<Grouped<'a>> {
    let mut grouped = Grouped {
        pods: Vec::with_capacity(answers.sandboxes.len()),
        sandboxes: Vec::with_capacity(answers.sandboxes.len()),
        containers: Vec::with_capacity(answers.containers.len()),
    };
    let lookup = || {
        Lookup::with_capacity_and_hasher(
            answers.sandboxes.len(),
            foldhash::fast::RandomState::default(),
        )
    };
    let mut by_uid: Lookup<'a> = lookup();
    let mut by_sandbox: Lookup<'a> = lookup();
    for &(entry, hash) in &answers.sandboxes {
        let keys = wire::sandbox_keys(entry).ok()?;
        let uid = keys.uid.filter(|uid| !uid.is_empty())?;
        if keys.id.is_empty() {
            return None;
        }
        let at = *by_uid.entry(uid).or_insert_with(|| {
            grouped.pods.push(Group {
                uid,
                sandboxes: 0,
                containers: 0,
                sum: 0,
            });
            grouped.pods.len() - 1
        });
        if by_sandbox.insert(keys.id, at).is_some() {
            return None;
        }
        let pod = &mut grouped.pods[at];
        pod.sandboxes += 1;
        pod.sum = pod.sum.wrapping_add(hash);
        grouped.sandboxes.push((at, entry));
    }
    for &(entry, hash) in &answers.containers {
        let keys = wire::container_keys(entry).ok()?;
        if keys.id.is_empty() {
            return None;
        }
        let at = *by_sandbox.get(keys.sandbox_id)?;
        let pod = &mut grouped.pods[at];
        pod.containers += 1;
        pod.sum = pod.sum.wrapping_add(hash);
        grouped.containers.push((at, entry));
    }
    Some(grouped)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_cri::v1 as cri;

    use super::*;

    fn sandbox(id: &str, uid: &str) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("pod-{uid}"),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: cri::PodSandboxState::SandboxReady as i32,
            created_at: 1_000,
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("note".into(), "x".repeat(100))]),
            ..cri::PodSandbox::default()
        }
    }

    fn container(id: &str, sandbox_id: &str, state: i32) -> cri::Container {
        cri::Container {
            id: id.into(),
            pod_sandbox_id: sandbox_id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: format!("app-{id}"),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..cri::ImageSpec::default()
            }),
            state,
            created_at: 2_000,
            ..cri::Container::default()
        }
    }

    const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
    const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

    struct Node {
        stats: RuntimeStats,
        known: KnownMetas,
        kept: ListedBytes,
    }

    impl Node {
        fn new() -> Self {
            Node {
                stats: RuntimeStats::default(),
                known: KnownMetas::default(),
                kept: ListedBytes::default(),
            }
        }

        fn list(
            &mut self,
            sandboxes: &[cri::PodSandbox],
            containers: &[cri::Container],
        ) -> Result<Listing, DecodeFailure> {
            let sandboxes = cri::ListPodSandboxResponse {
                items: sandboxes.to_vec(),
            }
            .encode_to_vec();
            let containers = cri::ListContainersResponse {
                containers: containers.to_vec(),
            }
            .encode_to_vec();
            listing_from_answers(
                &self.stats,
                &mut self.known,
                &mut self.kept,
                &sandboxes,
                &containers,
            )
        }
    }

    fn pod<'a>(listing: &'a Listing, uid: &str) -> &'a Arc<Pod> {
        listing.get(&PodUid::new(uid)).expect("pod listed")
    }

    fn three_pods(states: [i32; 3]) -> (Vec<cri::PodSandbox>, Vec<cri::Container>) {
        let sandboxes = vec![
            sandbox("s1", "u1"),
            sandbox("s2", "u2"),
            sandbox("s3", "u3"),
        ];
        // Listed out of pod order, as containerd lists them.
        let containers = vec![
            container("c3", "s3", states[2]),
            container("c1", "s1", states[0]),
            container("c2", "s2", states[1]),
            container("c1b", "s1", RUNNING),
        ];
        (sandboxes, containers)
    }

    #[test]
    fn pods_listed_in_the_same_bytes_are_kept_whole_and_a_changed_one_is_decoded_again() {
        let mut node = Node::new();
        let (sandboxes, containers) = three_pods([RUNNING; 3]);
        let first = node.list(&sandboxes, &containers).expect("well formed");
        assert_eq!(node.kept.len(), 3);
        assert_eq!(
            first.pods(),
            listing(
                &RuntimeStats::default(),
                &mut KnownMetas::default(),
                sandboxes.clone(),
                containers.clone()
            )
            .pods()
        );

        // The same bytes in another order: every pod is the same `Arc`.
        let mut reordered = containers.clone();
        reordered.reverse();
        let again = node.list(&sandboxes, &reordered).expect("well formed");
        for uid in ["u1", "u2", "u3"] {
            assert!(
                Arc::ptr_eq(pod(&first, uid), pod(&again, uid)),
                "{uid} kept"
            );
        }
        assert!(again.is_same(&first), "the same entries: the same listing");

        // c2 exited: its pod is decoded again, the others are kept.
        let (sandboxes, containers) = three_pods([RUNNING, EXITED, RUNNING]);
        let changed = node.list(&sandboxes, &containers).expect("well formed");
        assert!(Arc::ptr_eq(pod(&first, "u1"), pod(&changed, "u1")));
        assert!(Arc::ptr_eq(pod(&first, "u3"), pod(&changed, "u3")));
        let u2 = pod(&changed, "u2");
        assert!(!Arc::ptr_eq(pod(&first, "u2"), u2));
        assert_eq!(u2.containers[0].state, ContainerState::Exited);
        assert!(!changed.is_same(&first));
        let (sandboxes, mut containers) = three_pods([RUNNING, EXITED, RUNNING]);
        containers.rotate_left(1);
        let again = node.list(&sandboxes, &containers).expect("well formed");
        assert!(again.is_same(&changed), "the changed listing, listed again");
        assert_eq!(node.stats.unknown_values(), 0);
        assert_eq!(node.stats.skipped_records(), 0);
    }

    #[test]
    fn a_pod_whose_conversion_counts_something_is_never_kept_so_it_is_counted_at_every_relist() {
        let mut node = Node::new();
        let (sandboxes, mut containers) = three_pods([RUNNING, 77, RUNNING]);
        // A repeated container ID in pod u3.
        containers.push(container("c3", "s3", RUNNING));
        let first = node.list(&sandboxes, &containers).expect("well formed");
        assert_eq!(node.kept.len(), 1, "only u1 counts nothing");
        assert_eq!(node.stats.unknown_values(), 1);
        assert_eq!(first.duplicates_dropped(), 1);
        let again = node.list(&sandboxes, &containers).expect("well formed");
        assert_eq!(node.stats.unknown_values(), 2);
        assert_eq!(again.duplicates_dropped(), 1);
        assert_eq!(first.pods(), again.pods());
        assert!(Arc::ptr_eq(pod(&first, "u1"), pod(&again, "u1")));
    }

    #[test]
    fn a_container_whose_sandbox_is_not_listed_takes_the_general_rules() {
        let mut node = Node::new();
        let (sandboxes, mut containers) = three_pods([RUNNING; 3]);
        node.list(&sandboxes, &containers).expect("well formed");
        let mut orphan = container("c9", "s9", RUNNING);
        orphan
            .labels
            .insert("io.kubernetes.pod.uid".into(), "u9".into());
        containers.push(orphan);
        let listed = node.list(&sandboxes, &containers).expect("well formed");
        let expected = listing(
            &RuntimeStats::default(),
            &mut KnownMetas::default(),
            sandboxes.clone(),
            containers.clone(),
        );
        assert_eq!(listed.pods(), expected.pods());
        assert!(listed.contains(&PodUid::new("u9")), "placed by its label");
        assert_eq!(node.kept.len(), 0, "nothing kept from a general listing");
        // The next regular listing decodes everything again and keeps it.
        containers.pop();
        node.list(&sandboxes, &containers).expect("well formed");
        assert_eq!(node.kept.len(), 3);
    }

    #[test]
    fn an_answer_that_does_not_decode_fails_with_the_call_it_came_from() {
        let mut node = Node::new();
        let sandboxes = cri::ListPodSandboxResponse {
            items: vec![sandbox("s1", "u1")],
        }
        .encode_to_vec();
        let containers = cri::ListContainersResponse {
            containers: vec![container("c1", "s1", RUNNING)],
        }
        .encode_to_vec();
        let cut = &containers[..containers.len() - 3];
        let failure = listing_from_answers(
            &node.stats,
            &mut node.known,
            &mut node.kept,
            &sandboxes,
            cut,
        )
        .expect_err("a truncated answer");
        assert_eq!(failure.0, CriMethod::ListContainers);

        // Keys readable but a field that is not: the image spec as a varint.
        let mut bad = container("c1", "s1", RUNNING).encode_to_vec();
        bad.extend([0x20, 0x01]); // field 4 (image), wire type 0
        let mut answer = vec![0x0a];
        prost::encoding::encode_varint(bad.len() as u64, &mut answer);
        answer.extend(bad);
        let failure = listing_from_answers(
            &node.stats,
            &mut node.known,
            &mut node.kept,
            &sandboxes,
            &answer,
        )
        .expect_err("a field of the wrong type");
        assert_eq!(failure.0, CriMethod::ListContainers);
        assert!(failure.1.to_string().contains("wire type"), "{}", failure.1);
    }
}
