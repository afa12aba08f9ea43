//! Cross-process delivery latency through Redis: a publisher's broker, Redis, another
//! broker's relay, its hub, a WebSocket to a client that reads the message. Both brokers
//! run in this process (so one clock times both ends), each with its own connections to
//! Redis, as two processes would.
//!
//! ```sh
//! redis-server --port 6390 --save '' &
//! cargo run --release -p sockeye --features redis --example redis_latency -- \
//!     redis://127.0.0.1:6390/ streams 100 100 5
//! ```
//!
//! Arguments: URL, `streams` or `pubsub`, SUBSCRIBERS, MESSAGES per second, SECONDS.
//! Deliveries per second are SUBSCRIBERS x MESSAGES. Prints p50, p99 and the largest
//! latency over every delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sockeye::broker::redis::{RedisConfig, RedisPubSub, RedisStreams};
use sockeye::{Broker, Hub, HubConfig, Message, ServerConfig, WebSocketServer};
use tokio::sync::mpsc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .map_or("redis://127.0.0.1:6379/", |a| a.as_str());
    let mode = args.get(1).map_or("streams", |a| a.as_str());
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    let subscribers = number(2, 100) as usize;
    let rate = number(3, 100);
    let seconds = number(4, 5);

    let mut config = HubConfig::default();
    config.max_buffered = 16 * 1024 * 1024;
    let hub = Hub::new(config);
    let redis_config = RedisConfig::default();
    let (publisher, relay): (Arc<dyn Broker>, Arc<dyn Broker>) = match mode {
        "pubsub" => (
            Arc::new(
                RedisPubSub::connect(url, Hub::default(), redis_config.clone())
                    .await
                    .unwrap(),
            ),
            Arc::new(
                RedisPubSub::connect(url, hub.clone(), redis_config)
                    .await
                    .unwrap(),
            ),
        ),
        _ => (
            Arc::new(
                RedisStreams::connect(url, Hub::default(), redis_config.clone())
                    .await
                    .unwrap(),
            ),
            Arc::new(
                RedisStreams::connect(url, hub.clone(), redis_config)
                    .await
                    .unwrap(),
            ),
        ),
    };
    let topic = format!("latency-{}", std::process::id());
    relay.subscribe(&topic).await.unwrap();

    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let start = Instant::now();
    let (latencies, mut collected) = mpsc::unbounded_channel::<Vec<Duration>>();
    let expected = rate * seconds;
    for _ in 0..subscribers {
        let (mut client, _) = sockeye::connect(&url).await.unwrap();
        let (mut ws, _) = server.accept().await.unwrap().unwrap();
        hub.subscribe(&ws, &topic).unwrap();
        tokio::spawn(async move { while ws.recv().await.is_some() {} });
        let latencies = latencies.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(expected as usize);
            while seen.len() < expected as usize {
                let message = tokio::time::timeout(Duration::from_secs(10), client.recv()).await;
                let Ok(Some(Ok(Message::Binary(data)))) = message else {
                    break;
                };
                let sent = u64::from_be_bytes(data[..8].try_into().unwrap());
                let now = start.elapsed().as_nanos() as u64;
                seen.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
            let _ = latencies.send(seen);
        });
    }
    drop(latencies);

    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = tokio::time::Instant::now();
    for _ in 0..expected {
        tokio::time::sleep_until(next).await;
        next += period;
        let mut data = vec![0u8; 64];
        data[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        publisher
            .publish(&topic, Message::binary(data))
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    while let Some(seen) = collected.recv().await {
        all.extend(seen);
    }
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "{mode}: {subscribers} subscribers x {rate} msg/s = {} deliveries/s for {seconds} s: \
         {} of {} delivered, p50 {:?}, p99 {:?}, max {:?}",
        subscribers as u64 * rate,
        all.len(),
        subscribers as u64 * expected,
        at(0.5),
        at(0.99),
        all.last().unwrap()
    );
}
