//! Micro benchmarks of the hot paths: `cargo bench -p sockeye-proto`.
//!
//! Masking (the selected kernel through `apply_mask`, each kernel on its own, the
//! byte-at-a-time reference, and the one-pass copy and mask `copy_masked`), UTF-8 validation (incremental vs std), frame decode and
//! encode through the connection, the opening handshake, and permessage-deflate.

use std::hint::black_box;
use std::time::Instant;

use divan::counter::BytesCount;
use divan::Bencher;
use sockeye_proto::bytes::{Buf, Bytes, BytesMut};
use sockeye_proto::handshake::server::{parse_request, Upgrade};
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::mask::{apply_mask, apply_mask_naive, copy_masked, mask_kernel, Kernel};
use sockeye_proto::utf8::Utf8Validator;
use sockeye_proto::{Config, Connection, DataKind, Deflate, DeflateConfig, Role};

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[20, 1024, 16 * 1024, 1024 * 1024];

/// `apply_mask`, the public entry: the word loop under 24 B, else the selected kernel
/// (`mask_kernel()`, printed to stderr once) behind its cached dispatch.
#[divan::bench(args = SIZES)]
fn mask_selected(bencher: Bencher, len: usize) {
    static PRINTED: std::sync::Once = std::sync::Once::new();
    PRINTED.call_once(|| eprintln!("mask_selected uses the {} kernel", mask_kernel()));
    let mut data = vec![0x5au8; len];
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 1));
}

/// One kernel at every length (no short-payload shortcut); skipped where unavailable.
fn mask_with(bencher: Bencher, len: usize, kernel: Kernel) {
    if !kernel.is_available() {
        eprintln!("the {} masking kernel is not available here", kernel.name());
        return;
    }
    let mut data = vec![0x5au8; len];
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| kernel.apply(black_box(&mut data), [1, 2, 3, 4], 1));
}

/// The portable kernel (a `u64` at a time, compiler-vectorized): the fallback off x86_64.
#[divan::bench(args = SIZES)]
fn mask_portable(bencher: Bencher, len: usize) {
    mask_with(bencher, len, Kernel::Portable);
}

/// The SSE2 kernel (16 bytes a step), x86_64 without AVX2.
#[divan::bench(args = SIZES)]
fn mask_sse2(bencher: Bencher, len: usize) {
    mask_with(bencher, len, Kernel::Sse2);
}

/// The AVX2 kernel (32 bytes a step), x86_64 CPUs with AVX2.
#[divan::bench(args = SIZES)]
fn mask_avx2(bencher: Bencher, len: usize) {
    mask_with(bencher, len, Kernel::Avx2);
}

/// The byte-at-a-time reference.
#[divan::bench(args = SIZES)]
fn mask_naive(bencher: Bencher, len: usize) {
    let mut data = vec![0x5au8; len];
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| apply_mask_naive(black_box(&mut data), [1, 2, 3, 4], 1));
}

/// `copy_masked`, the one-pass copy and mask a client uses for a payload it cannot mask
/// in place, against copying and then masking the copy (what it did before).
#[divan::bench(args = SIZES)]
fn mask_copy_selected(bencher: Bencher, len: usize) {
    let src = vec![0x5au8; len];
    let mut dst = vec![std::mem::MaybeUninit::new(0u8); len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        copy_masked(black_box(&mut dst), black_box(&src), [1, 2, 3, 4], 1);
    });
}

/// A copy, then `apply_mask` over it: the two passes `mask_copy_selected` replaces.
#[divan::bench(args = SIZES)]
fn mask_copy_then_mask(bencher: Bencher, len: usize) {
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        black_box(&mut dst).copy_from_slice(black_box(&src));
        apply_mask(&mut dst, [1, 2, 3, 4], 1);
    });
}

fn text(len: usize, multibyte: bool) -> Vec<u8> {
    let unit = if multibyte {
        "κόσμε 🦀 "
    } else {
        "hello sockeye "
    };
    unit.repeat(len / unit.len() + 1).into_bytes()[..len].to_vec()
}

#[divan::bench(args = [1024, 1024 * 1024])]
fn utf8_incremental_ascii(bencher: Bencher, len: usize) {
    let data = text(len, false);
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        let mut v = Utf8Validator::new();
        v.feed(black_box(&data)).unwrap();
    });
}

#[divan::bench(args = [1024, 1024 * 1024])]
fn utf8_incremental_multibyte(bencher: Bencher, len: usize) {
    let data = text(len, true);
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        let mut v = Utf8Validator::new();
        let _ = v.feed(black_box(&data));
    });
}

#[divan::bench(args = [1024, 1024 * 1024])]
fn utf8_std(bencher: Bencher, len: usize) {
    let data = text(len, true);
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| std::str::from_utf8(black_box(&data)).is_ok());
}

/// 1,000 masked binary frames of `len` bytes, decoded by a server: cost per frame.
#[divan::bench(args = [20, 1024, 16 * 1024])]
fn decode_frames(bencher: Bencher, len: usize) {
    let mut client = Connection::new(Role::Client, Config::default());
    let payload = vec![7u8; len];
    for _ in 0..1000 {
        client.send_binary(&payload).unwrap();
    }
    let wire = client.transmit().take_all().freeze();
    let now = Instant::now();
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .with_inputs(|| BytesMut::from(&wire[..]))
        .bench_local_values(|mut input| {
            let mut server = Connection::new(Role::Server, Config::default());
            while let Some(message) = server.read(&mut input, now).unwrap() {
                black_box(message);
            }
        });
}

/// A server echoing 1,000 masked binary frames of `len` bytes, one read and one written
/// queue per frame as an echo server runs: `read_with`, then `send_fragment` (the payload
/// copied into the queue). Cost per frame.
#[divan::bench(args = [20, 1024, 16 * 1024])]
fn echo_frames(bencher: Bencher, len: usize) {
    let mut client = Connection::new(Role::Client, Config::default());
    let payload = vec![7u8; len];
    client.send_binary(&payload).unwrap();
    let frame = client.transmit().take_all().freeze();
    let config = std::sync::Arc::new(Config {
        deliver_fragments: true,
        ..Config::default()
    });
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .with_inputs(|| Connection::new(Role::Server, config.clone()))
        .bench_local_values(|mut server| {
            let mut input = BytesMut::with_capacity(64 * 1024);
            for _ in 0..1000 {
                input.extend_from_slice(&frame);
                while let Some(message) = server.read_with(&mut input, Instant::now).unwrap() {
                    if let sockeye_proto::Message::Fragment(piece) = message {
                        server.send_fragment(piece, true).unwrap();
                    }
                }
                // Written out.
                let transmit = server.transmit();
                black_box(transmit.chunk());
                transmit.advance(transmit.len());
                transmit.shrink();
            }
        });
}

/// Encoding one frame (server: header + copy; client: + mask).
#[divan::bench(args = [20, 1024, 16 * 1024])]
fn encode_frame_server(bencher: Bencher, len: usize) {
    let mut server = Connection::new(Role::Server, Config::default());
    let payload = vec![7u8; len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        server.send_binary(black_box(&payload)).unwrap();
        server.transmit().clear();
    });
}

#[divan::bench(args = [20, 1024, 16 * 1024, 64 * 1024, 1024 * 1024])]
fn encode_frame_client(bencher: Bencher, len: usize) {
    let config = Config {
        generate_mask: sockeye_proto::MaskSource::custom(|| [1, 2, 3, 4]),
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, config);
    let payload = vec![7u8; len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        client.send_binary(black_box(&payload)).unwrap();
        client.transmit().clear();
    });
}

/// Encoding one client frame masked with the default key source (a fresh key from the
/// CSPRNG per frame): the cost of drawing keys, against `encode_frame_client`'s constant
/// key.
#[divan::bench(args = [20, 1024])]
fn encode_frame_client_random_key(bencher: Bencher, len: usize) {
    let mut client = Connection::new(Role::Client, Config::default());
    let payload = vec![7u8; len];
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        client.send_binary(black_box(&payload)).unwrap();
        client.transmit().clear();
    });
}

/// Encoding one client frame of a handed-over payload nothing else refers to: masked in
/// place and referenced, not copied (compare `encode_frame_client`).
#[divan::bench(args = [64 * 1024, 1024 * 1024])]
fn encode_frame_client_unshared(bencher: Bencher, len: usize) {
    let config = Config {
        generate_mask: sockeye_proto::MaskSource::custom(|| [1, 2, 3, 4]),
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, config);
    bencher
        .counter(BytesCount::new(len))
        .with_inputs(|| Bytes::from(vec![7u8; len]))
        .bench_local_values(|payload| {
            client
                .send_bytes(DataKind::Binary, payload, true, true)
                .unwrap();
            client.transmit().clear();
        });
}

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// Parse, validate and answer one upgrade request.
#[divan::bench]
fn handshake_server() -> Vec<u8> {
    let (request, _) = parse_request(black_box(REQUEST), &HeadLimits::default())
        .unwrap()
        .unwrap();
    let upgrade = Upgrade::validate(&request).unwrap();
    let _ = upgrade
        .negotiate_deflate(&DeflateConfig::default())
        .unwrap();
    upgrade.accept(Some("chat"), &sockeye_proto::http::HeaderMap::new())
}

/// JSON-like lines, `len` bytes (a multiple of 32).
fn json_lines(len: usize) -> Vec<u8> {
    (0..len / 32)
        .flat_map(|i| {
            format!("{{\"id\":{i:08},\"name\":\"sockeye\"}}\n")
                .into_bytes()
                .into_iter()
                .take(32)
        })
        .collect()
}

/// Compresses `message` as a client and inflates it as the server, per iteration.
fn deflate_roundtrip(
    bencher: Bencher,
    config: &DeflateConfig,
    params: sockeye_proto::DeflateParams,
    message: &[u8],
) {
    let mut sender = Deflate::new(Role::Client, params, config);
    let mut receiver = Deflate::new(Role::Server, params, config);
    let mut out = BytesMut::new();
    bencher
        .counter(BytesCount::new(message.len()))
        .bench_local(|| {
            let compressed = sender.compress(black_box(message), true).to_vec();
            out.clear();
            receiver.decompress(&compressed, &mut out, 0, true).unwrap();
            assert_eq!(out.len(), message.len());
        });
}

/// Compress and inflate a 16 KiB JSON-like message with context takeover.
#[divan::bench]
fn deflate_roundtrip_16k(bencher: Bencher) {
    let config = DeflateConfig::default();
    let params = sockeye_proto::deflate::client_accept(&config, ["permessage-deflate"])
        .unwrap()
        .unwrap();
    deflate_roundtrip(bencher, &config, params, &json_lines(16 * 1024));
}

/// Compress and inflate a 1 KiB message with no context takeover either way: every
/// message starts a fresh deflate stream, so the codec's setup is part of the cost.
#[divan::bench]
fn deflate_roundtrip_1k_no_takeover(bencher: Bencher) {
    let config = DeflateConfig {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateConfig::default()
    };
    let offer = sockeye_proto::deflate::client_offer(&config);
    let params = sockeye_proto::deflate::server_accept(&config, [offer.as_str()])
        .unwrap()
        .unwrap();
    assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    deflate_roundtrip(bencher, &config, params, &json_lines(1024));
}
