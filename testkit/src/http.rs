//! One raw HTTP/1.1 request with chosen headers, for tests of the admin API
//! that must send (or leave out) exactly the headers a client would:
//! `Authorization`, `Origin`. The CLI is tested through `run_ferry`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply: the status code and the body (JSON for ferry's admin API).
#[derive(Debug)]
pub struct HttpReply {
    pub code: u16,
    pub body: String,
}

/// Sends `method path` with `headers` and `Connection: close`, and reads the
/// whole reply (5 s timeouts).
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| format!("set timeout: {e}"))?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in: {text}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status code in: {head}"))?;
    Ok(HttpReply {
        code,
        body: body.to_string(),
    })
}
