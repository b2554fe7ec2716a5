//! The gRPC API answers whatever a client sends as `:authority`.
//!
//! grpcio (C-core), grpc-java and grpcurl on a unix socket send the socket's
//! path as `:authority` (`/run/pleg/pleg.sock`, `unix:/run/pleg/pleg.sock`,
//! percent-encoded or not: grpcio 1.85 sends `run%2Fpleg%2Fpleg.sock`). That is no URI authority, and h2 as published
//! resets such a stream with PROTOCOL_ERROR; pleg's vendored h2
//! (`vendor/h2/PLEG-PATCH.md`) treats it as absent instead.
//!
//! No HTTP/2 client library can send such a header (their requests carry an
//! `http::Uri`, whose authority must parse), so this test speaks HTTP/2 by
//! hand: the connection preface, SETTINGS, one HEADERS frame whose HPACK block
//! is written with literal fields only, and a DATA frame with the gRPC
//! message. The answer is read frame by frame: a DATA frame with a
//! `HealthResponse` and trailers ending the stream, or a RST_STREAM.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use pleg::runtime::fake::FakeRuntime;
use pleg::server::Daemon;
use pleg::server::grpc::{self, Client, ClientError, pb};
use pleg::{Config, Pleg};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bounds every wait: a broken server fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// Frame types and flags (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`
/// (RFC 7541, section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal without Huffman coding.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// The HPACK block of a gRPC call of `path` with `:authority` = `authority`:
/// literal fields without indexing, so that the server's decoder keeps no
/// state between the calls of a connection.
fn request_headers(path: &str, authority: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    // Static table: 3 `:method: POST`, 6 `:scheme: http` (indexed fields).
    block.push(0x80 | 3);
    block.push(0x80 | 6);
    // Literal without indexing, indexed name: 4 `:path`, 1 `:authority`.
    hpack_int(&mut block, 0x00, 4, 4);
    hpack_str(&mut block, path.as_bytes());
    hpack_int(&mut block, 0x00, 4, 1);
    hpack_str(&mut block, authority);
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x00);
        hpack_str(&mut block, name.as_bytes());
        hpack_str(&mut block, value.as_bytes());
    }
    block
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// How the server answered one call.
#[derive(Debug)]
enum Answer {
    /// The stream ended with trailers, after these DATA payloads.
    Completed {
        data: Vec<u8>,
        headers_frames: usize,
    },
    /// The server reset the stream with this error code.
    Reset(u32),
    /// The server closed the connection (GOAWAY with this error code).
    GoAway(u32),
}

/// One HTTP/2 connection to the daemon's socket, past the preface.
struct RawConnection {
    socket: UnixStream,
    next_stream: u32,
}

impl RawConnection {
    async fn open(path: &Path) -> RawConnection {
        let mut socket = UnixStream::connect(path).await.expect("connect");
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.expect("preface");
        RawConnection {
            socket,
            next_stream: 1,
        }
    }

    async fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.socket
            .read_exact(&mut head)
            .await
            .expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.socket
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        (head[3], head[4], stream, payload)
    }

    /// Calls `/pleg.v1.Pleg/Health` with this `:authority` on a new stream.
    async fn health(&mut self, authority: &[u8]) -> Answer {
        let stream = self.next_stream;
        self.next_stream += 2;
        let message = pb::HealthRequest {}.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let mut out = frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_headers("/pleg.v1.Pleg/Health", authority),
        );
        out.extend(frame(DATA, END_STREAM, stream, &body));
        self.socket.write_all(&out).await.expect("request");

        let mut data = Vec::new();
        let mut headers_frames = 0;
        loop {
            let (kind, flags, id, payload) = self.read_frame().await;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    self.socket
                        .write_all(&frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .expect("settings ack");
                }
                PING if flags & ACK == 0 => {
                    self.socket
                        .write_all(&frame(PING, ACK, 0, &payload))
                        .await
                        .expect("ping ack");
                }
                GOAWAY => {
                    let code = u32::from_be_bytes(payload[4..8].try_into().expect("code"));
                    return Answer::GoAway(code);
                }
                RST_STREAM if id == stream => {
                    let code = u32::from_be_bytes(payload[..4].try_into().expect("code"));
                    return Answer::Reset(code);
                }
                DATA if id == stream => {
                    data.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return Answer::Completed {
                            data,
                            headers_frames,
                        };
                    }
                }
                HEADERS if id == stream => {
                    headers_frames += 1;
                    if flags & END_STREAM != 0 {
                        return Answer::Completed {
                            data,
                            headers_frames,
                        };
                    }
                }
                // WINDOW_UPDATE, acknowledgements: nothing to do.
                _ => {}
            }
        }
    }
}

/// The `HealthResponse` in a completed unary call's DATA, or how the call
/// failed.
fn health_response(answer: Answer) -> Result<pb::HealthResponse, String> {
    let (data, headers_frames) = match answer {
        Answer::Completed {
            data,
            headers_frames,
        } => (data, headers_frames),
        Answer::Reset(code) => return Err(format!("stream reset, HTTP/2 error code {code}")),
        Answer::GoAway(code) => {
            return Err(format!("connection closed, HTTP/2 error code {code}"));
        }
    };
    if headers_frames != 2 {
        return Err(format!(
            "{headers_frames} HEADERS frames, not response headers then trailers"
        ));
    }
    let Some((&[flag, l0, l1, l2, l3], message)) = data.split_first_chunk::<5>() else {
        return Err(format!("no gRPC message in {data:?}"));
    };
    if flag != 0 || u32::from_be_bytes([l0, l1, l2, l3]) as usize != message.len() {
        return Err(format!("not one uncompressed gRPC message: {data:?}"));
    }
    pb::HealthResponse::decode(message).map_err(|e| format!("no HealthResponse: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_whatever_the_client_sends_as_authority() {
    let dir = pleg_testkit::temp::dir("grpc-authority");
    let socket = dir.path().join("pleg.sock");
    let pleg = Pleg::new(FakeRuntime::new(), Config::generic()).expect("valid config");
    let daemon = Daemon::new(pleg, "fake", "");
    daemon.pleg.relist().await.expect("relist");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn({
        let daemon = daemon.clone();
        let socket = socket.clone();
        async move {
            grpc::serve(daemon, &socket, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    // The CLI's client (tonic, which sends no malformed authority) tells when
    // the server answers.
    let mut client = within("the server to answer", async {
        loop {
            match Client::connect(&socket).await {
                Ok(client) => return client,
                Err(ClientError::NoSocket { .. } | ClientError::Unreachable { .. }) => {
                    assert!(!serve.is_finished(), "serve ended early");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
    })
    .await;
    let expected = within("Health", client.health()).await.expect("Health");
    assert!(expected.healthy, "{expected:?}");

    let path = socket.display().to_string();
    let encoded = path.replace('/', "%2F");
    let authorities = [
        // What grpc-go and tonic send: a valid authority (the raw client's
        // own check).
        "localhost".to_string(),
        // grpc-java, grpcurl, older grpcio: the path itself.
        path.clone(),
        // grpcio (C-core) 1.85 on `unix:/tmp/x/pleg.sock`: the path without
        // its first `/`, the others percent-encoded (`tmp%2Fx%2Fpleg.sock`).
        encoded.trim_start_matches("%2F").to_string(),
        // The whole path percent-encoded.
        encoded.clone(),
        // The target as written, in its forms.
        format!("unix:{path}"),
        format!("unix://{path}"),
        format!("unix:{encoded}"),
        // Anything else that is no authority.
        "a b".to_string(),
        String::new(),
    ];
    // All on one connection, then each on a connection of its own (the
    // first call of a connection is no different).
    let mut refused = Vec::new();
    let mut connection = RawConnection::open(&socket).await;
    for fresh in [false, true] {
        for authority in &authorities {
            if fresh {
                connection = RawConnection::open(&socket).await;
            }
            let answer = within("a raw Health call", connection.health(authority.as_bytes())).await;
            match health_response(answer) {
                Ok(response) => {
                    assert!(response.healthy, "`:authority: {authority}`: {response:?}");
                    let names: Vec<_> = response.checks.iter().map(|c| c.name.as_str()).collect();
                    assert_eq!(
                        names,
                        ["pleg", "runtime", "stream", "pods"],
                        "`{authority}`"
                    );
                }
                Err(why) => refused.push(format!("`:authority: {authority}`: {why}")),
            }
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));

    // Serving stops once every connection is gone.
    drop((connection, client));
    let _ = stop.send(());
    within("serve to return", serve)
        .await
        .expect("serve task")
        .expect("serve ends cleanly");
}
