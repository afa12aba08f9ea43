//! An experiment control, not a peer: the plainest streaming WebSocket echo. One frame in
//! (wsload's: binary, FIN, masked), one frame out: the header with the whole length goes
//! with the first piece, then each read is unmasked and written as it comes (256 KiB
//! buffer, header and payload in one writev, tokio current-thread). With `FRAG=1` in the
//! environment it writes each piece as a frame of its own instead (binary, then
//! continuations). BENCHMARKS.md ("1 MiB and bbr's pacing") has what the two did at 1 MiB.
//! No handshake checks, no control frames: wsload only.
//!
//! usage: [FRAG=1] min_ws_echo PORT    (listens on 127.0.0.1:PORT). bench/side_by_side.sh
//! builds it with the peers, into ${CARGO_TARGET_DIR:-/tmp/sockeye-bench/target}/release/;
//! it is not in bench/servers.conf.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).unwrap().parse().unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move { let _ = echo(stream).await; });
    }
}

async fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    // Handshake.
    let mut n = 0;
    let end = loop {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 { return Ok(()); }
        n += k;
        if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") { break p + 4; }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
    }).unwrap();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes()).await?;
    buf.copy_within(end..n, 0);
    let mut have = n - end; // bytes at buf[..have]
    let mut left: u64 = 0; // payload bytes of the current frame still to forward
    let mut mask = [0u8; 4];
    let mut moff = 0usize;
    let mut out = Vec::with_capacity(16);
    loop {
        let mut start = 0;
        out.clear();
        if left == 0 {
            // Need a full header.
            while have < 2 || have < hlen(&buf[..have]) {
                let k = s.read(&mut buf[have..]).await?;
                if k == 0 { return Ok(()); }
                have += k;
            }
            let h = hlen(&buf[..have]);
            let len = match buf[1] & 0x7f { 126 => u16::from_be_bytes([buf[2], buf[3]]) as u64, 127 => u64::from_be_bytes(buf[2..10].try_into().unwrap()), l => l as u64 };
            mask.copy_from_slice(&buf[h - 4..h]);
            moff = 0;
            left = len;
            start = h;
            out.push(buf[0]);
            if len < 126 { out.push(len as u8); } else if len < 65536 { out.push(126); out.extend_from_slice(&(len as u16).to_be_bytes()); } else { out.push(127); out.extend_from_slice(&len.to_be_bytes()); }
        }
        if have == start {
            let k = s.read(&mut buf[..]).await?;
            if k == 0 { return Ok(()); }
            have = k;
            start = 0;
        }
        let take = ((have - start) as u64).min(left) as usize;
        if frag() {
            // Each piece as its own frame, as Sockeye's echo does.
            let first = !out.is_empty();
            out.clear();
            let fin = left == take as u64;
            out.push(if first { 0x02 } else { 0x00 } | if fin { 0x80 } else { 0 });
            let len = take as u64;
            if len < 126 { out.push(len as u8); } else if len < 65536 { out.push(126); out.extend_from_slice(&(len as u16).to_be_bytes()); } else { out.push(127); out.extend_from_slice(&len.to_be_bytes()); }
        }
        {
            let r = moff & 3;
            let m = [mask[r], mask[(r + 1) & 3], mask[(r + 2) & 3], mask[(r + 3) & 3]];
            let m8 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
            let data = &mut buf[start..start + take];
            let mut chunks = data.chunks_exact_mut(8);
            for c in &mut chunks {
                let v = u64::from_ne_bytes(c.try_into().unwrap()) ^ m8;
                c.copy_from_slice(&v.to_ne_bytes());
            }
            for (i, b) in chunks.into_remainder().iter_mut().enumerate() { *b ^= m[i & 3]; }
        }
        moff += take;
        left -= take as u64;
        // Header and payload in one writev, as Sockeye does.
        let mut h = 0;
        let mut p = 0;
        while h < out.len() || p < take {
            let slices = [std::io::IoSlice::new(&out[h..]), std::io::IoSlice::new(&buf[start + p..start + take])];
            let k = s.write_vectored(&slices).await?;
            let kh = k.min(out.len() - h);
            h += kh;
            p += k - kh;
        }
        let used = start + take;
        buf.copy_within(used..have, 0);
        have -= used;
    }
}

fn frag() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| std::env::var_os("FRAG").is_some())
}

fn hlen(b: &[u8]) -> usize {
    if b.len() < 2 { return 14; }
    2 + match b[1] & 0x7f { 126 => 2, 127 => 8, _ => 0 } + 4
}
