//! The two listing calls, decoded into messages that keep only what a
//! listing uses.
//!
//! A relist asks for every sandbox and container on the node. Decoded into
//! the full CRI messages, each container also carries its annotations, its
//! image spec's annotations and the image ID, none of which a listing
//! reads: at 50,000 containers that is tens of megabytes allocated, parsed
//! and freed every relist. These messages have the same field numbers as
//! CRI v1's `PodSandbox` and `Container` (`api.proto` of
//! `k8s.io/cri-api`), so they decode the same bytes; prost skips the fields
//! they leave out. `ListedSandbox` and `ListedContainer` are also built
//! from the full messages (`From`), which the tests use, and a property test
//! checks that both ways give the same listing.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::client::Grpc;
use tonic::transport::Channel;

use prost::bytes::Bytes;

/// A sandbox as `ListPodSandbox` lists it: no annotations, no runtime handler.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListedSandbox {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) metadata: Option<cri::PodSandboxMetadata>,
    /// A `PodSandboxState` value (any value: unknown ones are counted).
    #[prost(int32, tag = "3")]
    pub(crate) state: i32,
    #[prost(int64, tag = "4")]
    pub(crate) created_at: i64,
    /// The pod's labels, which selectors match.
    #[prost(map = "string, string", tag = "5")]
    pub(crate) labels: HashMap<String, String>,
}

/// A container as `ListContainers` lists it: no annotations, no image ID, of
/// the image spec only the image, and of its labels only the kubelet's four
/// that name its pod and itself (which stand in when the metadata or the
/// sandbox is missing). Decoding keeps no table of labels: every container
/// would otherwise allocate one, for labels the listing never reads.
#[derive(Clone, PartialEq, Debug, Default)]
pub(crate) struct ListedContainer {
    pub(crate) id: String,
    pub(crate) pod_sandbox_id: String,
    pub(crate) metadata: Option<cri::ContainerMetadata>,
    /// The image spec's image (empty when there is no spec).
    pub(crate) image: String,
    pub(crate) image_ref: String,
    /// A `ContainerState` value (any value: unknown ones are counted).
    pub(crate) state: i32,
    pub(crate) created_at: i64,
    /// The values of [`KUBELET_LABELS`], by position.
    kubelet_labels: [Option<String>; 4],
}

/// The labels kept from a container: the kubelet's pod UID, pod name, pod
/// namespace and container name.
pub(crate) const KUBELET_LABELS: [&str; 4] = [
    "io.kubernetes.pod.uid",
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.container.name",
];

impl ListedContainer {
    /// One of [`KUBELET_LABELS`] (any other key: `None`).
    pub(crate) fn label(&self, key: &str) -> Option<&String> {
        let at = KUBELET_LABELS.iter().position(|k| *k == key)?;
        self.kubelet_labels[at].as_ref()
    }

    /// Takes one of [`KUBELET_LABELS`] out.
    pub(crate) fn take_label(&mut self, key: &str) -> Option<String> {
        let at = KUBELET_LABELS.iter().position(|k| *k == key)?;
        self.kubelet_labels[at].take()
    }

    fn keep_label(&mut self, key: &str, value: String) {
        if let Some(at) = KUBELET_LABELS.iter().position(|k| *k == key) {
            self.kubelet_labels[at] = Some(value);
        }
    }
}

/// One entry of a protobuf map of strings (the wire form of `map<string,
/// string>`).
#[derive(Clone, PartialEq, prost::Message)]
struct LabelEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

impl prost::Message for ListedContainer {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{int32, int64, message, string};
        if !self.id.is_empty() {
            string::encode(1, &self.id, buf);
        }
        if !self.pod_sandbox_id.is_empty() {
            string::encode(2, &self.pod_sandbox_id, buf);
        }
        if let Some(metadata) = &self.metadata {
            message::encode(3, metadata, buf);
        }
        if !self.image.is_empty() {
            message::encode(
                4,
                &ListedImage {
                    image: self.image.clone(),
                },
                buf,
            );
        }
        if !self.image_ref.is_empty() {
            string::encode(5, &self.image_ref, buf);
        }
        if self.state != 0 {
            int32::encode(6, &self.state, buf);
        }
        if self.created_at != 0 {
            int64::encode(7, &self.created_at, buf);
        }
        for entry in self.label_entries() {
            message::encode(8, &entry, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{int32, int64, message, skip_field, string};
        match tag {
            1 => string::merge(wire_type, &mut self.id, buf, ctx),
            2 => string::merge(wire_type, &mut self.pod_sandbox_id, buf, ctx),
            3 => message::merge(
                wire_type,
                self.metadata.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            4 => {
                let mut spec = ListedImage {
                    image: std::mem::take(&mut self.image),
                };
                let merged = message::merge(wire_type, &mut spec, buf, ctx);
                self.image = spec.image;
                merged
            }
            5 => string::merge(wire_type, &mut self.image_ref, buf, ctx),
            6 => int32::merge(wire_type, &mut self.state, buf, ctx),
            7 => int64::merge(wire_type, &mut self.created_at, buf, ctx),
            8 => {
                let mut entry = LabelEntry::default();
                message::merge(wire_type, &mut entry, buf, ctx)?;
                self.keep_label(&entry.key, entry.value);
                Ok(())
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{int32, int64, message, string};
        let mut len = 0;
        if !self.id.is_empty() {
            len += string::encoded_len(1, &self.id);
        }
        if !self.pod_sandbox_id.is_empty() {
            len += string::encoded_len(2, &self.pod_sandbox_id);
        }
        if let Some(metadata) = &self.metadata {
            len += message::encoded_len(3, metadata);
        }
        if !self.image.is_empty() {
            len += message::encoded_len(
                4,
                &ListedImage {
                    image: self.image.clone(),
                },
            );
        }
        if !self.image_ref.is_empty() {
            len += string::encoded_len(5, &self.image_ref);
        }
        if self.state != 0 {
            len += int32::encoded_len(6, &self.state);
        }
        if self.created_at != 0 {
            len += int64::encoded_len(7, &self.created_at);
        }
        len + self
            .label_entries()
            .map(|entry| message::encoded_len(8, &entry))
            .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = ListedContainer::default();
    }
}

impl ListedContainer {
    fn label_entries(&self) -> impl Iterator<Item = LabelEntry> + '_ {
        KUBELET_LABELS
            .iter()
            .zip(&self.kubelet_labels)
            .filter_map(|(key, value)| {
                value.as_ref().map(|value| LabelEntry {
                    key: (*key).to_owned(),
                    value: value.clone(),
                })
            })
    }
}

/// An image spec's image, the only field of it a listing reads.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListedImage {
    #[prost(string, tag = "1")]
    pub(crate) image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    items: Vec<ListedSandbox>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    containers: Vec<ListedContainer>,
}

impl From<cri::PodSandbox> for ListedSandbox {
    fn from(s: cri::PodSandbox) -> Self {
        ListedSandbox {
            id: s.id,
            metadata: s.metadata,
            state: s.state,
            created_at: s.created_at,
            labels: s.labels,
        }
    }
}

impl From<cri::Container> for ListedContainer {
    fn from(c: cri::Container) -> Self {
        let mut listed = ListedContainer {
            id: c.id,
            pod_sandbox_id: c.pod_sandbox_id,
            metadata: c.metadata,
            image: c.image.map(|spec| spec.image).unwrap_or_default(),
            image_ref: c.image_ref,
            state: c.state,
            created_at: c.created_at,
            kubelet_labels: [None, None, None, None],
        };
        for (key, value) in c.labels {
            listed.keep_label(&key, value);
        }
        listed
    }
}

/// The client of the two listing calls, on the runtime's channel.
#[derive(Clone, Debug)]
pub(crate) struct ListingClient {
    grpc: Grpc<Channel>,
}

impl ListingClient {
    pub(crate) fn new(channel: Channel, max_message_size: usize) -> Self {
        ListingClient {
            grpc: Grpc::new(channel)
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
        }
    }

    /// `ListPodSandbox` with no filter: the answer's bytes (a
    /// `ListPodSandboxResponse`), which `convert::listing_from_wire` reads.
    pub(crate) async fn sandboxes(mut self) -> Result<tonic::Response<Bytes>, tonic::Status> {
        self.unary(
            "/runtime.v1.RuntimeService/ListPodSandbox",
            "ListPodSandbox",
            cri::ListPodSandboxRequest { filter: None },
        )
        .await
    }

    /// `ListContainers` with no filter: the answer's bytes (a
    /// `ListContainersResponse`).
    pub(crate) async fn containers(mut self) -> Result<tonic::Response<Bytes>, tonic::Status> {
        self.unary(
            "/runtime.v1.RuntimeService/ListContainers",
            "ListContainers",
            cri::ListContainersRequest { filter: None },
        )
        .await
    }

    async fn unary<Q>(
        &mut self,
        path: &'static str,
        method: &'static str,
        request: Q,
    ) -> Result<tonic::Response<Bytes>, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("runtime channel not ready: {e}")))?;
        let mut request = tonic::Request::new(request);
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("runtime.v1.RuntimeService", method));
        self.grpc
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawAnswer::<Q>::default(),
            )
            .await
    }
}

/// The slim messages of a whole answer, for an answer the wire reader could
/// not walk (prost then names what is wrong with it).
pub(crate) fn decode_answers(
    sandboxes: &[u8],
    containers: &[u8],
) -> Result<(Vec<ListedSandbox>, Vec<ListedContainer>), (super::CriMethod, prost::DecodeError)> {
    use prost::Message as _;
    let sandboxes = ListPodSandboxResponse::decode(sandboxes)
        .map_err(|e| (super::CriMethod::ListPodSandbox, e))?
        .items;
    let containers = ListContainersResponse::decode(containers)
        .map_err(|e| (super::CriMethod::ListContainers, e))?
        .containers;
    Ok((sandboxes, containers))
}

/// A codec that encodes a prost request and hands the answer over as its
/// bytes, undecoded (the buffer tonic received it in, not a copy).
struct RawAnswer<Q>(std::marker::PhantomData<Q>);

impl<Q> Default for RawAnswer<Q> {
    fn default() -> Self {
        RawAnswer(std::marker::PhantomData)
    }
}

/// The decoder of [`RawAnswer`].
struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<Q: prost::Message + Send + 'static> tonic::codec::Codec for RawAnswer<Q> {
    type Encode = Q;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<Q>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_slim_messages_decode_what_the_full_ones_encode() {
        let container = cri::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                annotations: HashMap::from([("a".into(), "b".into())]),
                user_specified_image: "busybox:1".into(),
                runtime_handler: "runc".into(),
            }),
            image_ref: "sha256:abc".into(),
            state: 7, // outside the enum: kept as it came
            created_at: 42,
            labels: HashMap::from([("io.kubernetes.container.name".into(), "app".into())]),
            annotations: HashMap::from([("x".into(), "y".repeat(1000))]),
            image_id: "sha256:def".into(),
        };
        let full = cri::ListContainersResponse {
            containers: vec![container.clone()],
        };
        let slim = ListContainersResponse::decode(full.encode_to_vec().as_slice())
            .expect("the same wire format");
        assert_eq!(slim.containers, vec![ListedContainer::from(container)]);

        let sandbox = cri::PodSandbox {
            id: "s1".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            state: 1,
            created_at: 7,
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("x".into(), "y".into())]),
            runtime_handler: "runc".into(),
        };
        let full = cri::ListPodSandboxResponse {
            items: vec![sandbox.clone()],
        };
        let slim = ListPodSandboxResponse::decode(full.encode_to_vec().as_slice())
            .expect("the same wire format");
        assert_eq!(slim.items, vec![ListedSandbox::from(sandbox)]);
    }
}
