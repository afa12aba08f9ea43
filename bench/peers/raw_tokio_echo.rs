//! Plain TCP echo on tokio: the limit reference for the Rust WebSocket servers of the
//! side-by-side harness (BENCHMARKS.md, "Method").
//!
//! Restores the harness's missing `src/rust/src/bin/raw_tokio_echo.rs` (see its README.md);
//! bench/side_by_side.sh copies it there before building. Crate versions: the harness's
//! src/rust/Cargo.toml and Cargo.lock (tokio 1).
//!
//! usage: raw_tokio_echo PORT    (listens on 127.0.0.1:PORT)
//!
//! Current-thread runtime, one task per connection, a 64 KiB buffer per connection: read what
//! is there, write all of it back. No framing: the harness runs it in raw mode (`wsload -r`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: raw_tokio_echo PORT");
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream));
    }
}

async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
