//! Each mistake a newcomer makes gets one message naming its cause once, in words.

use super::{echo_server, free_port, run, self_signed, start, stderr, tls_echo};

/// Whether `needle` occurs exactly once in `text`.
fn once(text: &str, needle: &str) -> bool {
    text.matches(needle).count() == 1
}

/// No Rust `Debug` output of rustls or webpki errors in a message.
fn assert_no_debug_dump(text: &str) {
    for dump in [
        "Other(",
        "OtherError",
        "InvalidContentType",
        "CaUsedAsEndEntity",
    ] {
        assert!(!text.contains(dump), "a Debug dump ({dump}) in {text:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_names_the_cause_once() {
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let output = run(&["connect", &url]).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!("sockeye: error: cannot connect to {url}: ")),
        "{text}"
    );
    assert!(once(&text, "Connection refused"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[tokio::test]
async fn wss_to_a_plain_port_says_the_port_does_not_speak_tls() {
    let server = echo_server(&[]).await;
    let output = run(&["connect", &format!("wss://{}/", server.addr)]).await;
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("does not speak TLS"), "{text}");
    assert!(text.contains("plain ws://"), "{text}");
    assert_no_debug_dump(&text);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_in_words() {
    let pem = self_signed(false);
    let server = tls_echo(&pem).await;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let output = run(&["connect", &url]).await;
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("the certificate was refused"), "{text}");
    assert!(
        text.contains("not signed by a trusted certificate authority"),
        "{text}"
    );
    assert_no_debug_dump(&text);
}

#[tokio::test]
async fn a_ca_certificate_served_as_the_servers_own_is_refused_in_words() {
    let pem = self_signed(true);
    let server = tls_echo(&pem).await;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let output = run(&["connect", &url, "--ca", &pem.cert]).await;
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("it is a CA certificate"), "{text}");
    assert_no_debug_dump(&text);
}

#[tokio::test]
async fn a_busy_port_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for args in [
        &["serve", "--listen", &addr][..],
        &["echo", "--listen", &addr],
        &["echo", "--threads", "2", "--listen", &addr],
    ] {
        let output = run(args).await;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains(&format!("cannot listen on {addr}: ")),
            "{args:?}: {text}"
        );
        assert!(once(&text, "Address already in use"), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn a_url_without_a_scheme_suggests_ws() {
    for url in ["127.0.0.1:9", "localhost:9/chat"] {
        let output = run(&["connect", url]).await;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("no scheme"), "{text}");
        assert!(text.contains(&format!("ws://{url}")), "{text}");
        assert!(!text.contains("relative URL"), "{text}");
    }
}

/// `http://` and `https://` mean `ws://` and `wss://` (as in wscat and ws), and the
/// message for another scheme lists them.
#[tokio::test]
async fn http_urls_connect_as_ws_and_the_scheme_message_lists_them() {
    let server = echo_server(&[]).await;
    let output = run(&["connect", &format!("http://{}/", server.addr)]).await;
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("connected to"), "{text}");

    let output = run(&["connect", "ftp://127.0.0.1:9/"]).await;
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("ws, wss, http, https or ws+unix, not ftp"),
        "{text}"
    );
}

#[tokio::test]
async fn zero_threads_are_refused() {
    let output = run(&["echo", "--listen", "127.0.0.1:0", "--threads", "0"]).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--threads"), "{text}");
    assert!(text.contains("at least 1"), "{text}");
}

#[tokio::test]
async fn listen_takes_a_host_name() {
    for command in ["echo", "serve"] {
        let prefix = if command == "echo" {
            "sockeye echo listening on ws://"
        } else {
            "sockeye serve: open http://"
        };
        let server = start(&[command, "--listen", "localhost:0"], prefix).await;
        assert!(server.addr.ip().is_loopback(), "{}", server.addr);
        tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("the server listens at the address it printed");
    }
}
