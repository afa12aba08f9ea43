//! TLS: `wss://` clients against TLS servers over loopback, with certificates made here
//! by rcgen (a CA, a server certificate for `localhost` and 127.0.0.1, a client
//! certificate).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sockeye::rustls;
use sockeye::tls::{self, rustls_error};
use sockeye::{
    ClientConfig, Error, Message, ServerConfig, ServerStream, TlsError, WebSocketServer,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::{within, STEP};

/// A test PKI: one CA, a server certificate and a client certificate it signed.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Sockeye test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "sockeye test client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// A TLS echo server on an ephemeral loopback port; each accepted connection's path is
/// sent back first as a text message.
async fn echo_server(tls: Option<Arc<rustls::ServerConfig>>) -> Arc<WebSocketServer<ServerStream>> {
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_secs(2);
    let server = Arc::new(
        WebSocketServer::bind_tls("127.0.0.1:0", config, tls)
            .await
            .expect("bind"),
    );
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(accepted) = accepting.accept().await {
            let Ok((mut ws, request)) = accepted else {
                continue;
            };
            tokio::spawn(async move {
                let path = request.uri().to_string();
                if ws.send_text(&path).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    server
}

fn client_config(tls: sockeye::ClientTlsConfig) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(STEP);
    config.tls = tls;
    config
}

fn trusting(pki: &Pki) -> sockeye::ClientTlsConfig {
    let mut tls = sockeye::ClientTlsConfig::default();
    tls.ca_pem = Some(pki.ca_pem.clone().into_bytes());
    tls
}

async fn next_text(ws: &mut sockeye::WebSocket<sockeye::MaybeTlsStream>) -> String {
    match within("a message", ws.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Connects to `url`, checks the path the server saw and one echo, and closes.
async fn echo_once(url: &str, config: ClientConfig, expected_path: &str) {
    let (mut ws, response) = within("connect", sockeye::connect_maybe_tls_with(url, config))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(response.status(), 101);
    assert_eq!(next_text(&mut ws).await, expected_path);
    ws.send_text("hello over TLS").await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello over TLS");
    let big = vec![7u8; 300_000];
    ws.send_binary(&big).await.unwrap();
    match within("a binary echo", ws.next()).await {
        Some(Ok(Message::Binary(data))) => assert_eq!(data.as_ref(), big.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    within("close", ws.close(None)).await.unwrap();
}

fn server_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    tls::server_config_from_pem(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
}

#[tokio::test]
async fn custom_ca_connects_and_echoes_on_a_custom_port_and_path() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    let port = server.local_addr().port();
    let url = format!("wss://localhost:{port}/room/1?x=y");
    echo_once(&url, client_config(trusting(&pki)), "/room/1?x=y").await;
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let err = within(
        "refusal",
        sockeye::connect_maybe_tls_with(&url, client_config(Default::default())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
    assert!(
        matches!(err, Error::Tls(TlsError::Rustls(_))),
        "a TLS failure is Error::Tls: {err:?}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");
    // The server keeps serving.
    echo_once(&url, client_config(trusting(&pki)), "/").await;
}

#[tokio::test]
async fn a_name_not_in_the_certificate_is_refused() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    // 127.0.0.2 reaches the loopback listener on Linux but is not in the certificate.
    let url = format!("wss://127.0.0.2:{}/", server.local_addr().port());
    let Err(err) = within(
        "refusal",
        sockeye::connect_maybe_tls_with(&url, client_config(trusting(&pki))),
    )
    .await
    else {
        panic!("connected to a name the certificate does not hold");
    };
    // Where 127.0.0.2 is unreachable, the connect itself fails; either way, no session.
    if let Some(e) = rustls_error(&err) {
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }
}

#[tokio::test]
async fn dangerous_opt_out_connects_without_the_ca() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    let mut tls = sockeye::ClientTlsConfig::default();
    tls.dangerous_accept_any_certificate = true;
    let url = format!("wss://localhost:{}/any", server.local_addr().port());
    echo_once(&url, client_config(tls), "/any").await;
}

#[tokio::test]
async fn client_certificates_are_verified() {
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::certificates(pki.ca_pem.as_bytes(), "CA").unwrap() {
        roots.add(cert).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), tls::provider())
            .build()
            .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            tls::certificates(pki.server_cert_pem.as_bytes(), "server").unwrap(),
            tls::private_key(pki.server_key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let server = echo_server(Some(Arc::new(server_config))).await;
    let url = format!("wss://localhost:{}/mtls", server.local_addr().port());

    // Without a client certificate: refused.
    let err = within(
        "refusal",
        sockeye::connect_maybe_tls_with(&url, client_config(trusting(&pki))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
            ))
        ),
        "refused at the TLS layer: {err:?}"
    );

    // A certificate of another CA: refused.
    let other = pki_other_client();
    let mut tls = trusting(&pki);
    tls.cert_pem = Some(other.0.into_bytes());
    tls.key_pem = Some(other.1.into_bytes());
    within(
        "refusal",
        sockeye::connect_maybe_tls_with(&url, client_config(tls)),
    )
    .await
    .unwrap_err();

    // With it: accepted.
    let mut tls = trusting(&pki);
    tls.cert_pem = Some(pki.client_cert_pem.clone().into_bytes());
    tls.key_pem = Some(pki.client_key_pem.clone().into_bytes());
    echo_once(&url, client_config(tls), "/mtls").await;
}

/// A self-signed client certificate and key no server here trusts.
fn pki_other_client() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_fails_cleanly_and_the_server_keeps_serving() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    let port = server.local_addr().port();
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(STEP);
    let err = within(
        "a plain client's failure",
        sockeye::connect_with(&format!("ws://localhost:{port}/"), config),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io(_) | Error::Handshake(_) | Error::UnexpectedResponse(_)
        ),
        "{err:?}"
    );
    echo_once(
        &format!("wss://localhost:{port}/after"),
        client_config(trusting(&pki)),
        "/after",
    )
    .await;
}

#[tokio::test]
async fn a_silent_tcp_client_is_dropped_after_the_handshake_timeout() {
    let pki = pki();
    let server = echo_server(Some(server_tls(&pki))).await;
    let mut raw = within("connect", TcpStream::connect(server.local_addr()))
        .await
        .unwrap();
    // The server's handshake timeout is 2 s: it closes the connection, never answering.
    let mut buf = [0u8; 64];
    let n = within("the server closing", raw.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent {:?}", &buf[..n]);
}

#[tokio::test]
async fn plain_ws_through_the_tls_capable_api() {
    let server = echo_server(None).await;
    let url = format!("ws://127.0.0.1:{}/plain", server.local_addr().port());
    echo_once(&url, client_config(Default::default()), "/plain").await;
}

#[tokio::test]
async fn verify_client_sees_secure_only_on_tls() {
    let pki = pki();
    let only_secure = sockeye::verify_client(|info| {
        if info.secure {
            Ok(())
        } else {
            Err(sockeye::Rejection {
                status: sockeye::proto::http::StatusCode::FORBIDDEN,
                ..Default::default()
            })
        }
    });
    let mut config = ServerConfig::default();
    config.verify_client = Some(only_secure);
    let tls_server = WebSocketServer::bind_tls("127.0.0.1:0", config.clone(), server_tls(&pki))
        .await
        .unwrap();
    let plain_server = WebSocketServer::bind_tls("127.0.0.1:0", config, None)
        .await
        .unwrap();

    let url = format!("wss://localhost:{}/", tls_server.local_addr().port());
    let (_ws, response) = within(
        "connect",
        sockeye::connect_maybe_tls_with(&url, client_config(trusting(&pki))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);

    let url = format!("ws://127.0.0.1:{}/", plain_server.local_addr().port());
    let err = within(
        "refusal",
        sockeye::connect_maybe_tls_with(&url, client_config(Default::default())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err:?}");
}

#[tokio::test]
async fn connect_refuses_wss_and_points_to_connect_maybe_tls() {
    let err = sockeye::connect("wss://localhost:1/").await.unwrap_err();
    assert!(
        matches!(&err, Error::Url(why) if why.contains("connect_maybe_tls")),
        "{err:?}"
    );
}

#[test]
fn invalid_pem_is_an_invalid_tls_config() {
    let mut tls = sockeye::ClientTlsConfig::default();
    tls.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec());
    let err = tls.to_rustls().unwrap_err();
    assert!(
        matches!(&err, Error::Tls(TlsError::InvalidConfig(_))),
        "{err:?}"
    );
    assert!(tls::server_config_from_pem(b"", b"").is_err());
}

/// The server side of a TLS handshake with a client that speaks plain HTTP: `Error::Tls`
/// with rustls's refusal, not an I/O error.
#[tokio::test]
async fn a_plain_client_fails_the_server_handshake_with_a_tls_error() {
    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest).await;
    });
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let err = within(
        "the handshake's failure",
        tls::server_handshake(stream, server_tls(&pki)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(TlsError::Rustls(_))),
        "a TLS failure is Error::Tls: {err:?}"
    );
    assert!(rustls_error(&err).is_some());
    assert_eq!(err.close_code(), None);
    within("the client", client).await.unwrap();
}

/// A hub publishing to a TLS subscriber whose reader is slower than the publisher:
/// what TLS took from a write at publish time but could not send yet is flushed by the
/// task reading the connection, so every message arrives (TLS buffers records; a
/// plain socket has nothing to flush).
#[tokio::test]
async fn hub_messages_reach_a_tls_subscriber_whole() {
    const MESSAGES: usize = 100;
    const SIZE: usize = 40 * 1024;
    let pki = pki();
    let server = WebSocketServer::bind_tls(
        "127.0.0.1:0",
        ServerConfig::default(),
        Some(server_tls(&pki)),
    )
    .await
    .unwrap();
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let mut hub_config = sockeye::HubConfig::default();
    hub_config.max_buffered = 64 * 1024 * 1024;
    let hub = sockeye::Hub::new(hub_config);
    let config = client_config(trusting(&pki));
    let connecting =
        tokio::spawn(async move { sockeye::connect_maybe_tls_with(&url, config).await });
    let (mut ws, _) = within("accept", server.accept()).await.unwrap().unwrap();
    let (mut client, _) = within("connect", connecting).await.unwrap().unwrap();
    hub.subscribe(&ws, "t").unwrap();
    tokio::spawn(async move { while ws.recv().await.is_some() {} });
    for seq in 0..MESSAGES {
        let mut data = vec![seq as u8; SIZE];
        data[0] = seq as u8;
        let report = hub.publish("t", data).unwrap();
        assert_eq!(report.delivered, 1, "{report:?}");
    }
    for seq in 0..MESSAGES {
        match within("a published message", client.next()).await {
            Some(Ok(Message::Binary(data))) => {
                assert_eq!((data.len(), data[0]), (SIZE, seq as u8));
            }
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
}
