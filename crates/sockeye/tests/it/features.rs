//! What the crate does with a default feature off, over real loopback sockets: without
//! `deflate`, permessage-deflate offers get no extension and messages flow uncompressed;
//! without `rustls`, a `wss://` URL is the documented [`Error::Url`] before any connection
//! is made. Each test runs only in the configuration it is about
//! (`cargo test -p sockeye --no-default-features [--features ...]`).

#[cfg(not(feature = "deflate"))]
mod without_deflate {
    use futures_util::StreamExt;
    use sockeye::proto::http;
    use sockeye::{ClientConfig, DeflateConfig, Message, ServerConfig};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use crate::support::{
        accept_one, client_frame, frame, read_head, read_wire_frame, server, within,
    };

    fn deflate_server_config() -> ServerConfig {
        ServerConfig {
            per_message_deflate: Some(DeflateConfig::default()),
            ..ServerConfig::default()
        }
    }

    /// A raw client offers permessage-deflate to a server configured for it: the 101 names
    /// no extension, messages flow uncompressed both ways, and RSV1 is a protocol error
    /// (1002), as on any connection that did not negotiate the extension (RFC 7692 §6).
    #[tokio::test]
    async fn a_server_declines_the_offer_and_messages_flow() {
        let server = server(deflate_server_config()).await;
        let addr = server.local_addr();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        raw.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut raw).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{head}"
        );
        let mut ws = accept_one(&server).await;
        assert_eq!(ws.extensions(), "");

        raw.write_all(&client_frame(true, 1, b"plain"))
            .await
            .unwrap();
        let got = within("the message", ws.next()).await.unwrap().unwrap();
        assert_eq!(got, Message::text("plain"));
        // Over the default threshold (1024 bytes), yet sent as is.
        let big = "x".repeat(4096);
        ws.send_text(big.as_str()).await.unwrap();
        let f = read_wire_frame(&mut raw).await;
        assert_eq!((f.opcode, f.rsv), (1, 0), "uncompressed");
        assert_eq!(f.payload, big.as_bytes());

        raw.write_all(&frame(true, 0b100, 1, Some([1, 2, 3, 4]), b"x"))
            .await
            .unwrap();
        let failure = async {
            match within("the failure", ws.next()).await {
                Some(Err(e)) => assert_eq!(e.ws_code(), Some("WS_ERR_UNEXPECTED_RSV_1"), "{e}"),
                other => panic!("{other:?}"),
            }
        };
        let close = async {
            let f = read_wire_frame(&mut raw).await;
            assert_eq!(f.opcode, 8, "a close frame: {f:?}");
            assert_eq!(
                f.payload.get(..2),
                Some(&1002u16.to_be_bytes()[..]),
                "{f:?}"
            );
            // The failing side waits for the end of the stream before it reports.
            let _ = raw.shutdown().await;
        };
        tokio::join!(failure, close);
    }

    /// Sockeye's client, whose default settings offer permessage-deflate, offers nothing;
    /// the connection works with no extension on either end.
    #[tokio::test]
    async fn a_client_offers_nothing() {
        let server = server(deflate_server_config()).await;
        let url = format!("ws://{}/", server.local_addr());
        let config = ClientConfig::default();
        assert!(config.per_message_deflate.is_some(), "still configured");
        let (mut client, response) = within("connect", sockeye::connect_with(&url, config))
            .await
            .unwrap();
        assert!(!response
            .headers()
            .contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS));
        let (mut ws, request) = within("accept", server.accept()).await.unwrap().unwrap();
        assert!(
            !request
                .headers()
                .contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS),
            "no offer: {:?}",
            request.headers()
        );
        assert_eq!((client.extensions(), ws.extensions()), ("", ""));
        let big = "y".repeat(4096);
        client.send_text(big.as_str()).await.unwrap();
        let got = within("to the server", ws.next()).await.unwrap().unwrap();
        assert_eq!(got, Message::text(big.as_str()));
        ws.send_text("back").await.unwrap();
        let got = within("to the client", client.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text("back"));
    }
}

#[cfg(not(feature = "rustls"))]
mod without_rustls {
    use std::time::Duration;

    use sockeye::{ClientConfig, Error};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use crate::support::{read_head, within};

    fn assert_no_tls(err: &Error) {
        match err {
            Error::Url(why) => assert!(
                why.contains("wss:// needs TLS support") && why.contains("`rustls` feature"),
                "{why}"
            ),
            other => panic!("expected Error::Url, got {other:?}"),
        }
    }

    /// A `wss://` URL fails with the documented [`Error::Url`], before connecting.
    #[tokio::test]
    async fn a_wss_url_is_a_url_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("wss://{}/", listener.local_addr().unwrap());
        let err = within("the error", sockeye::connect_maybe_tls(&url))
            .await
            .unwrap_err();
        assert_no_tls(&err);
        assert!(err.to_string().contains(&url), "{err}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "no TCP connection was made"
        );
    }

    /// A redirect from `ws://` to `wss://` (or `https://`) ends the same way.
    #[tokio::test]
    async fn a_redirect_to_wss_is_a_url_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let redirector = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = read_head(&mut stream).await;
            assert!(head.starts_with("GET /start HTTP/1.1"), "{head}");
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: https://{addr}/secure\r\nContent-Length: 0\r\n\r\n"
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            // The client must not come back over TCP.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), listener.accept())
                    .await
                    .is_err(),
                "no second connection"
            );
        });
        let mut config = ClientConfig::default();
        config.follow_redirects = true;
        let url = format!("ws://{addr}/start");
        let err = within("the error", sockeye::connect_maybe_tls_with(&url, config))
            .await
            .unwrap_err();
        assert_no_tls(&err);
        assert!(err.to_string().contains("wss://"), "{err}");
        within("the redirector", redirector).await.unwrap();
    }
}
