//! Shared helpers for the integration tests: raw frames and a raw TCP peer.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use sockeye::{ServerConfig, WebSocket, WebSocketServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any test step longer than this is a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// Encodes a frame by hand: any FIN/RSV/opcode, with a mask key or none.
pub fn frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame as a client sends it.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, Some([0x12, 0x34, 0x56, 0x78]), payload)
}

/// Starts a server on an ephemeral loopback port.
pub async fn server(config: ServerConfig) -> WebSocketServer {
    WebSocketServer::bind("127.0.0.1:0", config)
        .await
        .expect("bind")
}

/// Opens a raw TCP connection and performs a client handshake by hand; returns the stream
/// positioned after the 101 response.
pub async fn raw_client(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Reads an HTTP head byte by byte (so nothing after it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("head in time")
            .unwrap();
        assert!(n == 1, "EOF in head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// One frame as it is on the wire, its payload unmasked.
#[derive(Debug)]
pub struct WireFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// Reads one frame, masked or not, from a raw stream (within [`STEP`]).
pub async fn read_wire_frame(stream: &mut (impl AsyncRead + Unpin)) -> WireFrame {
    tokio::time::timeout(STEP, async {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await.expect("frame header");
        let len = match h[1] & 0x7f {
            126 => usize::from(stream.read_u16().await.expect("16-bit length")),
            127 => usize::try_from(stream.read_u64().await.expect("64-bit length")).unwrap(),
            n => usize::from(n),
        };
        let mut key = None;
        if h[1] & 0x80 != 0 {
            let mut k = [0u8; 4];
            stream.read_exact(&mut k).await.expect("mask key");
            key = Some(k);
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        if let Some(k) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= k[i % 4]);
        }
        WireFrame {
            fin: h[0] & 0x80 != 0,
            rsv: (h[0] >> 4) & 0x07,
            opcode: h[0] & 0x0f,
            masked: key.is_some(),
            payload,
        }
    })
    .await
    .expect("a frame in time")
}

/// Reads one frame from a raw stream: (fin, opcode, unmasked payload).
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> (bool, u8, Vec<u8>) {
    let frame = read_wire_frame(stream).await;
    (frame.fin, frame.opcode, frame.payload)
}

/// Accepts one connection from `server`.
pub async fn accept_one(server: &WebSocketServer) -> WebSocket<TcpStream> {
    tokio::time::timeout(STEP, server.accept())
        .await
        .expect("accept in time")
        .expect("server open")
        .expect("handshake")
        .0
}

/// Runs `test` again in a process of its own (this test binary, that test alone, with
/// `var` set so that it knows) and checks that it passed within `limit`; returns its
/// stdout.
pub async fn rerun_alone(test: &str, var: &str, limit: Duration) -> String {
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(var, "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("{test} alone: not ended within {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
