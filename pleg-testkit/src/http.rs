//! A small HTTP/1.1 client for the daemon's probes and `/metrics`: one
//! request per connection (`Connection: close`), any method, the status, the
//! headers and the body (chunked bodies decoded). Every exchange is bounded
//! by [`TIMEOUT`].

use std::fmt::Display;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound on one exchange: connecting, sending and reading the answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (decoded when it came chunked).
    pub body: String,
}

impl Reply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` (`host:port`).
pub async fn get(addr: impl Display, path: &str) -> io::Result<Reply> {
    request(addr, "GET", path).await
}

/// Sends `method path` to `addr` (`host:port`) and reads the whole answer.
/// Fails with `TimedOut` when it takes longer than [`TIMEOUT`], and with
/// `InvalidData` for an answer that is not HTTP/1.1 or not UTF-8.
pub async fn request(addr: impl Display, method: &str, path: &str) -> io::Result<Reply> {
    let addr = addr.to_string();
    let exchange = async {
        let mut stream = TcpStream::connect(addr.as_str()).await?;
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, io::Error>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{method} http://{addr}{path}: no complete answer within {TIMEOUT:?}"),
            )
        })??;
    parse(&raw).map_err(|reason| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{method} http://{addr}{path}: {reason}"),
        )
    })
}

fn parse(raw: &[u8]) -> Result<Reply, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer has no header block")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: body.to_string(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(body)?;
    }
    Ok(reply)
}

fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or("a chunk without a size line")?;
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("a chunk shorter than its size")?;
        out.push_str(chunk);
        rest = after
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_split_into_status_headers_and_body() {
        let reply = parse(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nX-A: b\r\n\r\nnot yet\n")
            .expect("an answer");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.header("x-a"), Some("b"));
        assert_eq!(reply.body, "not yet\n");
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let reply = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("an answer");
        assert_eq!(reply.body, "abcde");
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse(b"garbage").is_err());
    }

    #[tokio::test]
    async fn a_request_reaches_a_server_and_comes_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("a connection");
            let mut buf = vec![0; 1024];
            let n = conn.read(&mut buf).await.expect("the request");
            let asked = String::from_utf8_lossy(&buf[..n]).to_string();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .expect("the answer");
            asked
        });
        let reply = request(addr, "HEAD", "/healthz?verbose")
            .await
            .expect("an answer");
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
        let asked = server.await.expect("the server");
        assert!(
            asked.starts_with("HEAD /healthz?verbose HTTP/1.1\r\n"),
            "{asked}"
        );
        assert!(get("127.0.0.1:1", "/").await.is_err());
    }
}
