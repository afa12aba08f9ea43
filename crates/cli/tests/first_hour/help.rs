//! Bare `sockeye` says what it does, and does it.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{run, sockeye, STEP};

/// `text`'s words joined by single spaces.
fn words(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn help_says_that_no_command_starts_serve() {
    for args in [&["--help"][..], &["help"]] {
        let output = run(args).await;
        // As one line: clap wraps help to the terminal's width.
        let text = words(&output.stdout);
        assert!(output.status.success(), "{args:?}");
        assert!(
            text.contains("With no command, `sockeye` runs `sockeye serve`"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:8080/"), "{text}");
        assert!(
            text.contains("chat room (/chat); the default command"),
            "{text}"
        );
    }
}

/// `sockeye` alone serves the demo on 127.0.0.1:8080; where that port is taken (another
/// program on this machine), it fails naming that address, as `serve` would.
#[tokio::test]
async fn no_command_starts_serve() {
    let mut child = sockeye()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("a first line in time")
        .unwrap();
    match first {
        Some(line) => assert_eq!(
            line,
            "sockeye serve: open http://127.0.0.1:8080/ (Ctrl-C to stop)"
        ),
        None => {
            let mut text = String::new();
            let mut stderr = child.stderr.take().unwrap();
            tokio::time::timeout(STEP, stderr.read_to_string(&mut text))
                .await
                .unwrap()
                .unwrap();
            assert!(text.contains("cannot listen on 127.0.0.1:8080: "), "{text}");
        }
    }
    let _ = child.kill().await;
}

/// `sockeye connect --help` lists the commands a line of input can be.
#[tokio::test]
async fn connect_help_lists_the_slash_commands() {
    let output = run(&["connect", "--help"]).await;
    let text = words(&output.stdout);
    assert!(output.status.success());
    for command in [
        "/ping [DATA]",
        "/binary TEXT",
        "/close [CODE [REASON]]",
        "/help",
        "//TEXT",
    ] {
        assert!(text.contains(command), "{command}: {text}");
    }
}
