//! A minimal reader of the protobuf wire format, for a relist's two answers.
//!
//! An idle node's `ListPodSandbox` and `ListContainers` answers are, entry
//! for entry, the bytes of the previous relist's. Decoding them in full
//! allocates a string per field, every relist, to find out that nothing
//! changed. This reader walks the answer without allocating: it yields each
//! entry's bytes and the few fields that group entries into pods (IDs, the
//! sandbox's pod UID, a container's sandbox ID), so that `convert` can
//! fingerprint each pod's entries and decode only the pods whose bytes
//! changed.
//!
//! The reader follows prost's rules where they matter here: a scalar field
//! listed twice keeps its last value, and a message field listed twice is
//! merged (so its fields keep their last values too). What it does not know
//! how to read (groups, a truncated varint or field, a length past the end)
//! is an error: the caller then decodes the whole answer with prost, which
//! gives the error a runtime would be told.

/// Why the bytes could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

/// A field's value, as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of one message, in wire order.
#[derive(Debug, Clone)]
pub(super) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(super) fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for (i, byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        if len > self.rest.len() {
            return Err(Malformed);
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let tag = u32::try_from(key >> 3).map_err(|_| Malformed)?;
            if tag == 0 {
                return Err(Malformed);
            }
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                    Value::Bytes(self.take(len)?)
                }
                5 => {
                    self.take(4)?;
                    Value::Fixed32
                }
                _ => return Err(Malformed),
            };
            Ok((tag, value))
        })();
        if field.is_err() {
            // Nothing after a malformed field can be read.
            self.rest = &[];
        }
        Some(field)
    }
}

/// The entries of a `ListPodSandboxResponse` (`items`, field 1) or a
/// `ListContainersResponse` (`containers`, field 1): each entry's bytes.
#[cfg(test)]
fn entries(answer: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    entries_map(answer, |entry| entry)
}

/// The entries of a `ListPodSandboxResponse` (`items`, field 1) or a
/// `ListContainersResponse` (`containers`, field 1), each entry's bytes
/// mapped by `f` as it is found.
pub(super) fn entries_map<'a, T>(
    answer: &'a [u8],
    mut f: impl FnMut(&'a [u8]) -> T,
) -> Result<Vec<T>, Malformed> {
    let mut out = Vec::new();
    for field in Fields::new(answer) {
        match field? {
            (1, Value::Bytes(entry)) => out.push(f(entry)),
            (1, _) => return Err(Malformed),
            _ => {}
        }
    }
    Ok(out)
}

/// What groups a listed sandbox into its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SandboxKeys<'a> {
    pub(super) id: &'a str,
    /// `metadata.uid`; `None` without metadata.
    pub(super) uid: Option<&'a str>,
}

/// The ID and pod UID of a `PodSandbox` (id = 1, metadata = 2; in the
/// metadata, uid = 2).
pub(super) fn sandbox_keys(entry: &[u8]) -> Result<SandboxKeys<'_>, Malformed> {
    let mut keys = SandboxKeys { id: "", uid: None };
    for field in Fields::new(entry) {
        match field? {
            (1, Value::Bytes(id)) => keys.id = text(id)?,
            (2, Value::Bytes(metadata)) => {
                let uid = keys.uid.get_or_insert("");
                for field in Fields::new(metadata) {
                    match field? {
                        (2, Value::Bytes(value)) => *uid = text(value)?,
                        (2, _) => return Err(Malformed),
                        _ => {}
                    }
                }
            }
            (1 | 2, _) => return Err(Malformed),
            _ => {}
        }
    }
    Ok(keys)
}

/// What groups a listed container into its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContainerKeys<'a> {
    pub(super) id: &'a str,
    pub(super) sandbox_id: &'a str,
}

/// The ID and sandbox ID of a `Container` (`id` = 1, `pod_sandbox_id` = 2).
pub(super) fn container_keys(entry: &[u8]) -> Result<ContainerKeys<'_>, Malformed> {
    let mut keys = ContainerKeys {
        id: "",
        sandbox_id: "",
    };
    for field in Fields::new(entry) {
        match field? {
            (1, Value::Bytes(id)) => keys.id = text(id)?,
            (2, Value::Bytes(id)) => keys.sandbox_id = text(id)?,
            (1 | 2, _) => return Err(Malformed),
            _ => {}
        }
    }
    Ok(keys)
}

fn text(bytes: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_cri::v1 as cri;
    use prost::Message;

    use super::*;

    #[test]
    fn the_entries_and_their_keys_are_read_as_prost_wrote_them() {
        let sandbox = cri::PodSandbox {
            id: "s1".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 300,
            }),
            state: 1,
            created_at: -7,
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("x".into(), "y".repeat(300))]),
            runtime_handler: "runc".into(),
        };
        let answer = cri::ListPodSandboxResponse {
            items: vec![sandbox.clone(), cri::PodSandbox::default()],
        }
        .encode_to_vec();
        let listed = entries(&answer).expect("well formed");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], sandbox.encode_to_vec().as_slice());
        assert_eq!(
            sandbox_keys(listed[0]),
            Ok(SandboxKeys {
                id: "s1",
                uid: Some("u1")
            })
        );
        assert_eq!(
            sandbox_keys(listed[1]),
            Ok(SandboxKeys { id: "", uid: None })
        );

        let container = cri::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            state: 2,
            created_at: i64::MAX,
            ..cri::Container::default()
        };
        let answer = cri::ListContainersResponse {
            containers: vec![container],
        }
        .encode_to_vec();
        let listed = entries(&answer).expect("well formed");
        assert_eq!(
            container_keys(listed[0]),
            Ok(ContainerKeys {
                id: "c1",
                sandbox_id: "s1"
            })
        );
    }

    #[test]
    fn a_repeated_field_keeps_its_last_value_and_metadata_merges() {
        // id "a", metadata{uid "u"}, id "b", metadata{name "n"}: prost
        // decodes id "b" and uid "u".
        let bytes = [
            0x0a, 1, b'a', 0x12, 3, 0x12, 1, b'u', 0x0a, 1, b'b', 0x12, 3, 0x0a, 1, b'n',
        ];
        let decoded = cri::PodSandbox::decode(bytes.as_slice()).expect("prost reads it");
        assert_eq!(decoded.id, "b");
        assert_eq!(decoded.metadata.map(|m| m.uid), Some("u".into()));
        assert_eq!(
            sandbox_keys(&bytes),
            Ok(SandboxKeys {
                id: "b",
                uid: Some("u")
            })
        );
    }

    #[test]
    fn truncated_or_unreadable_bytes_are_malformed_and_nothing_panics() {
        let good = cri::ListContainersResponse {
            containers: vec![cri::Container {
                id: "c1".repeat(40),
                pod_sandbox_id: "s1".into(),
                ..cri::Container::default()
            }],
        }
        .encode_to_vec();
        for end in 0..good.len() {
            let cut = &good[..end];
            // Every cut either reads (at an entry's end) or is malformed.
            if let Ok(listed) = entries(cut) {
                for entry in listed {
                    let _ = container_keys(entry);
                }
            }
        }
        assert_eq!(
            entries(&[0x0a, 5, 1]),
            Err(Malformed),
            "length past the end"
        );
        assert_eq!(entries(&[0x0b]), Err(Malformed), "a group");
        assert_eq!(entries(&[0x08, 1]), Err(Malformed), "field 1 not bytes");
        assert_eq!(entries(&[0xff; 11]), Err(Malformed), "varint too long");
        assert_eq!(
            container_keys(&[0x0a, 1, 0xff]),
            Err(Malformed),
            "not UTF-8"
        );
        assert_eq!(entries(&[0x00, 0]), Err(Malformed), "tag zero");
    }
}
