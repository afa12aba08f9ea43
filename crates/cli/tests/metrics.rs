//! `--metrics ADDR`: the library's counters in Prometheus' text format, scraped over a
//! real socket while traffic flows through `sockeye echo`.

use std::net::SocketAddr;

use futures_util::StreamExt;
use sockeye::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::STEP;

/// A loopback port free at the time of asking.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// GET /metrics; the value of every sample line, by its name and labels.
async fn scrape(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let body = tokio::time::timeout(STEP, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await
    .expect("scraped in time");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body.lines()
        .filter(|line| line.starts_with("sockeye_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn echo_serves_counters_that_move_with_traffic() {
    let metrics = free_port();
    let metrics_arg = metrics.to_string();
    let (addr, _child) = common::echo_process(&["--metrics", &metrics_arg]).await;

    let (mut ws, _) = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
    ws.send_text("one").await.unwrap();
    assert!(matches!(
        tokio::time::timeout(STEP, ws.next()).await.unwrap(),
        Some(Ok(Message::Text(_)))
    ));
    let first = scrape(metrics).await;
    assert_eq!(
        first["sockeye_connections_open{role=\"server\"}"], 1.0,
        "{first:#?}"
    );
    let received = |m: &std::collections::BTreeMap<String, f64>| {
        m.get("sockeye_message_bytes_received_total")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(received(&first) >= 3.0, "{first:#?}");

    for _ in 0..10 {
        ws.send_binary(&[7u8; 1000]).await.unwrap();
        tokio::time::timeout(STEP, ws.next()).await.unwrap();
    }
    let second = scrape(metrics).await;
    assert_eq!(
        received(&second) - received(&first),
        10_000.0,
        "{second:#?}"
    );
    assert!(
        second["sockeye_wire_bytes_written_total"] - first["sockeye_wire_bytes_written_total"]
            >= 10_000.0
    );
    // Every echo written out: nothing queued.
    assert_eq!(
        second["sockeye_send_queue_bytes{role=\"server\"}"], 0.0,
        "{second:#?}"
    );

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    // The server notices the end as it reads it: poll until the gauge shows it.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let now = scrape(metrics).await;
        if now["sockeye_connections_open{role=\"server\"}"] == 0.0 {
            assert_eq!(
                now["sockeye_connections_closed_total{role=\"server\",code=\"none\",by=\"peer\"}"],
                1.0,
                "{now:#?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
