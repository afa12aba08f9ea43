//! fastwebsockets echo server for the side-by-side harness (BENCHMARKS.md, "Method").
//!
//! Restores the harness's missing `src/rust/src/bin/fw_echo.rs` (see its README.md);
//! bench/side_by_side.sh copies it there before building. Crate versions: the harness's
//! src/rust/Cargo.toml and Cargo.lock (fastwebsockets 0.10, hyper 1, hyper-util 0.1).
//!
//! usage: fw_echo PORT    (listens on 127.0.0.1:PORT)
//!
//! As fastwebsockets' own examples/echo_server.rs: current-thread tokio runtime, hyper 1 HTTP/1
//! server with upgrades, `fastwebsockets::upgrade::upgrade`, the WebSocket wrapped in a
//! `FragmentCollector` (so fragmented messages are echoed as one message), auto close and auto
//! pong on, every text or binary message written back as one frame. Unlike that example the
//! connection task is a plain `tokio::spawn` (no `tokio::task::unconstrained`), like the other
//! tokio servers here: tokio's defaults for everyone.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = handle_client(fut).await;
    });
    Ok(response)
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: fw_echo PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(server_upgrade))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    })
}
