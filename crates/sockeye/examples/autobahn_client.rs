//! Runs every Autobahn|Testsuite case in client role against a fuzzingserver, echoing
//! each message, then asks the server to update its reports.
//!
//! ```text
//! cargo run --release --example autobahn_client -- ws://127.0.0.1:9001 [agent]
//! ```
//! The URL and agent also come from `AUTOBAHN_URL` and `AUTOBAHN_AGENT`.

use futures_util::StreamExt;
use sockeye::{ClientConfig, Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .or_else(|| std::env::var("AUTOBAHN_URL").ok())
        .ok_or("usage: autobahn_client URL [AGENT]")?;
    let agent = args
        .next()
        .or_else(|| std::env::var("AUTOBAHN_AGENT").ok())
        .unwrap_or_else(|| "sockeye".into());
    let base = base.trim_end_matches('/');

    let count = case_count(base).await?;
    eprintln!("autobahn_client: {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = run_case(&url).await {
            eprintln!("case {case}: {e}");
        }
    }
    let (mut ws, _) = sockeye::connect(&format!("{base}/updateReports?agent={agent}")).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

async fn case_count(base: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let (mut ws, _) = sockeye::connect(&format!("{base}/getCaseCount")).await?;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            return Ok(text.trim().parse()?);
        }
    }
    Err("no case count received".into())
}

async fn run_case(url: &str) -> Result<(), sockeye::Error> {
    let mut config = ClientConfig::default();
    config.websocket.max_payload = 64 * 1024 * 1024;
    let (mut ws, _) = sockeye::connect_with(url, config).await?;
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            ws.send(message).await?;
        }
    }
    Ok(())
}
