//! `sockeye connect` as a wscat user expects it: --execute and --wait, the slash
//! commands, the close line, and a prompt and colour only on a terminal.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{CloseFrame, Message, ServerConfig, WebSocketServer};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{echo_server, on_a_terminal, run, sockeye, start, stderr, terminal, STEP};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn execute_sends_each_line_then_closes_and_exits() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let output = run(&[
        "connect",
        &url,
        "-x",
        "hello",
        "-x",
        "/binary abc",
        "--execute",
        "/ping hi",
        "-x",
        "//slash",
    ])
    .await;
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["< hello", "< [binary, 3 bytes]", "< [pong] hi", "< /slash"],
        "{err}"
    );
    assert!(err.lines().any(|l| l == "closed 1000"), "{err}");
    // Piped: no colour, no prompt.
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "{out:?} {err:?}"
    );
    assert!(!out.contains("> "), "{out:?}");
}

#[tokio::test]
async fn an_unknown_command_is_refused_and_not_sent() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let output = run(&["connect", &url, "-x", "/nope", "-x", "after"]).await;
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown command /nope"), "{err}");
    assert_eq!(out, "< after\n", "{err}");
}

/// A server that reports every message it receives (pings included), and answers each
/// text message with "late" after `delay`, from another task: meanwhile it goes on
/// reading, so a close that comes first is answered first.
async fn recording_server(delay: Duration) -> (String, mpsc::UnboundedReceiver<Message>) {
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Some(Ok((ws, _))) = server.accept().await else {
            return;
        };
        let (writer, mut reader) = ws.split();
        while let Some(Ok(message)) = reader.next().await {
            if message.is_text() {
                let writer = writer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = writer.send_text("late").await;
                });
            }
            let _ = seen.send(message);
        }
    });
    (url, received)
}

#[tokio::test]
async fn commands_go_on_the_wire_as_frames() {
    let (url, mut seen) = recording_server(Duration::ZERO).await;
    let output = run(&[
        "connect",
        &url,
        "-x",
        "/ping p",
        "-x",
        "/binary b",
        "-x",
        "/close 4000 all done",
    ])
    .await;
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    let mut messages = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(STEP, seen.recv()).await {
        messages.push(message);
    }
    assert_eq!(
        messages,
        [
            Message::Ping("p".into()),
            Message::Binary("b".into()),
            Message::Close(Some(CloseFrame::new(4000, "all done"))),
        ]
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("closed 4000 private application code")),
        "{err}"
    );
}

#[tokio::test]
async fn wait_keeps_printing_after_execute() {
    let delay = Duration::from_millis(300);
    let (url, _seen) = recording_server(delay).await;
    let output = run(&["connect", &url, "-x", "hi", "--wait", "3"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "< late\n");

    // Without --wait the close goes right after the line; the late answer is not printed.
    let (url, _seen) = recording_server(delay).await;
    let output = run(&["connect", &url, "-x", "hi"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
}

/// `serve` stopping (SIGINT) closes with 1001: the client prints that, and exits 0.
#[tokio::test]
async fn a_server_going_away_prints_the_close_line() {
    let serve = start(
        &["serve", "--listen", "127.0.0.1:0"],
        "sockeye serve: open http://",
    )
    .await;
    let mut client = sockeye()
        .args(["connect", &format!("ws://{}/echo", serve.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = client.stderr.take().unwrap();
    let mut text = String::new();
    let mut buf = [0; 256];
    while !text.contains("connected to") {
        let n = tokio::time::timeout(STEP, err.read(&mut buf))
            .await
            .expect("connected in time")
            .unwrap();
        assert_ne!(n, 0, "{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let pid = serve.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(STEP, err.read_to_string(&mut text))
        .await
        .expect("connect ends in time")
        .unwrap();
    let status = tokio::time::timeout(STEP, client.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "closed 1001 going away: server shutting down"),
        "{text}"
    );
}

#[tokio::test]
async fn a_terminal_gets_a_prompt_and_colour_unless_no_color() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let input = "hello\n/close\n";
    let command = format!("{} connect {url}", env!("CARGO_BIN_EXE_sockeye"));
    let Some(shown) = on_a_terminal(&command, input, &[]).await else {
        return;
    };
    assert!(shown.contains("> "), "{shown:?}");
    assert!(shown.contains("/help for commands"), "{shown:?}");
    // Green for the status line, cyan for what arrived.
    assert!(shown.contains("\x1b[32mconnected to"), "{shown:?}");
    assert!(shown.contains("\x1b[36m< hello"), "{shown:?}");
    assert!(shown.contains("closed 1000"), "{shown:?}");

    let shown = on_a_terminal(&command, input, &[("NO_COLOR", "1")])
        .await
        .unwrap();
    assert!(shown.contains("> "), "{shown:?}");
    assert!(shown.contains("< hello"), "{shown:?}");
    let colours = (30..=37).map(|c| format!("\x1b[{c}m"));
    for colour in colours.chain(["\x1b[1m".to_owned()]) {
        assert!(!shown.contains(&colour), "NO_COLOR: no colour: {shown:?}");
    }
}

/// On a terminal, a message that arrives while a line is being typed is printed above
/// it, and the typed text is drawn again after the prompt: still on the screen, and
/// sent whole at Enter.
#[tokio::test]
async fn a_message_arriving_while_typing_leaves_the_typed_text_on_screen() {
    // A server that says "news" when told to, and reports what it receives.
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let (say, mut told) = mpsc::unbounded_channel::<()>();
    let (seen, mut received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Some(Ok((ws, _))) = server.accept().await else {
            return;
        };
        let (writer, mut reader) = ws.split();
        tokio::spawn(async move {
            while told.recv().await.is_some() {
                let _ = writer.send_text("news").await;
            }
        });
        while let Some(Ok(message)) = reader.next().await {
            let _ = seen.send(message);
        }
    });

    let command = format!("{} connect {url}", env!("CARGO_BIN_EXE_sockeye"));
    let mut terminal = Terminal::start(&command).await;
    terminal.until("connected to").await;
    terminal.type_in("half a li").await;
    terminal.until("> half a li").await;
    // The message comes in the middle of the line.
    say.send(()).unwrap();
    let after = terminal.until("< news").await;
    let redrawn = terminal.until("> half a li").await;
    assert!(
        redrawn > after,
        "the typed text drawn again after the message"
    );
    terminal.type_in("ne\r").await;
    let message = tokio::time::timeout(STEP, received.recv()).await.unwrap();
    assert_eq!(message, Some(Message::text("half a line")));
    terminal.type_in("/close\r").await;
    terminal.until("closed 1000").await;
}

/// At a terminal's prompt Ctrl-C is a key (raw mode), and does what the signal does:
/// the connection closes with 1000 and the close line is shown.
#[tokio::test]
async fn ctrl_c_at_the_prompt_closes_with_1000() {
    let (url, mut seen) = recording_server(Duration::ZERO).await;
    let command = format!("{} connect {url}", env!("CARGO_BIN_EXE_sockeye"));
    let mut terminal = Terminal::start(&command).await;
    terminal.until("connected to").await;
    terminal.type_in("not sent\x03").await;
    terminal.until("closing (Ctrl-C again").await;
    terminal.until("closed 1000").await;
    let message = tokio::time::timeout(STEP, seen.recv()).await.unwrap();
    assert_eq!(
        message,
        Some(Message::Close(Some(CloseFrame::new(1000, ""))))
    );
}

/// A command run under util-linux `script`, so that it has a terminal; what it shows is
/// read as it comes, and keys are typed in at any time.
struct Terminal {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    /// Everything shown so far.
    shown: String,
    /// Where the text `until` found last ends.
    found: usize,
}

impl Terminal {
    async fn start(command: &str) -> Terminal {
        // `on_a_terminal` asserts that `script` exists, rather than skipping.
        // Without colour, what is shown can be matched as plain text.
        let mut child = terminal(command, &[("NO_COLOR", "1")])
            .spawn()
            .expect("util-linux `script` is required for the terminal tests (Debian: bsdutils)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        Terminal {
            _child: child,
            stdin,
            stdout,
            shown: String::new(),
            found: 0,
        }
    }

    async fn type_in(&mut self, keys: &str) {
        tokio::io::AsyncWriteExt::write_all(&mut self.stdin, keys.as_bytes())
            .await
            .unwrap();
    }

    /// Reads until `text` is shown after what the previous call found; returns where
    /// it starts in everything shown.
    async fn until(&mut self, text: &str) -> usize {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(at) = self.shown[self.found..].find(text) {
                let at = self.found + at;
                self.found = at + text.len();
                return at;
            }
            let n = tokio::time::timeout(STEP, self.stdout.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{text:?} not shown in time; shown: {:?}", self.shown))
                .unwrap();
            assert_ne!(n, 0, "{text:?} never shown; shown: {:?}", self.shown);
            self.shown.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

/// Ctrl-C (SIGINT) closes with 1000 and waits for the server's answer, as end of input
/// does, rather than dropping the connection.
#[tokio::test]
async fn ctrl_c_closes_with_1000() {
    let (url, mut seen) = recording_server(Duration::ZERO).await;
    let mut client = sockeye()
        .args(["connect", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = client.stderr.take().unwrap();
    let mut text = String::new();
    let mut buf = [0; 256];
    while !text.contains("connected to") {
        let n = tokio::time::timeout(STEP, err.read(&mut buf))
            .await
            .expect("connected in time")
            .unwrap();
        assert_ne!(n, 0, "{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let pid = client.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(STEP, client.wait())
        .await
        .expect("connect exits in time")
        .unwrap();
    tokio::time::timeout(STEP, err.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}: {text}");
    assert!(text.lines().any(|l| l == "closed 1000"), "{text}");
    let message = tokio::time::timeout(STEP, seen.recv()).await.unwrap();
    assert_eq!(
        message,
        Some(Message::Close(Some(CloseFrame::new(1000, ""))))
    );
}
