//! A hyper server with a WebSocket echo on `/ws` and a plain page on `/`.
//!
//! `cargo run -p sockeye-hyper --example hyper_echo`, then
//! `sockeye connect ws://127.0.0.1:8080/ws`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sockeye::{DeflateConfig, ServerConfig};

async fn handle(
    mut request: Request<Incoming>,
    config: Arc<ServerConfig>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/ws" {
        let mut response = Response::new(Full::from("hello from hyper\n"));
        if request.uri().path() != "/" {
            *response.status_mut() = StatusCode::NOT_FOUND;
        }
        return Ok(response);
    }
    match sockeye_hyper::upgrade(&mut request, &config).await {
        Ok((response, upgrade)) => {
            tokio::spawn(async move {
                let mut ws = match upgrade.await {
                    Ok(ws) => ws,
                    Err(e) => return eprintln!("upgrade failed: {e}"),
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
            Ok(response.map(|_| Full::default()))
        }
        Err(error) => Ok(error.response()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut config = ServerConfig::default();
    config.per_message_deflate = Some(DeflateConfig::default());
    let config = Arc::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let config = config.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, config.clone()));
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                eprintln!("connection error: {e}");
            }
        });
    }
}
