//! `sockeye connect`: an interactive client, like wscat.
//!
//! Typed lines are sent as text; a line that starts with `/` is a command (`/ping`,
//! `/pong`, `/binary`, `/close`, `/help`; `//` sends a line that starts with `/`).
//! Received messages go to stdout (`< text`), everything else to stderr. On a terminal
//! there is a `> ` prompt and colour; colour follows anstream's rules (off when the
//! stream is not a terminal or `NO_COLOR` is set, on with `CLICOLOR_FORCE`). At the
//! prompt, the line is edited by [`LineEditor`], which draws what is being typed again
//! below every message that arrives meanwhile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use sockeye::{ClientConfig, CloseCode, CloseFrame, Error, Message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::line_editor::{Edit, LineEditor};
use crate::read;

/// `sockeye connect` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server URL, e.g. ws://127.0.0.1:8080/echo, wss://example.com/ or
    /// ws+unix:/path/to.sock:/request/path (a Unix socket).
    url: String,
    /// A subprotocol to offer (repeat for several).
    #[arg(long = "protocol", short = 'p')]
    protocols: Vec<String>,
    /// An extra request header, "Name: value" (repeat for several).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The Origin header.
    #[arg(long, short = 'o')]
    origin: Option<String>,
    /// Give up if the connection and handshake take longer, in seconds.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// The largest message accepted, in bytes (0: no limit).
    #[arg(long, default_value_t = sockeye::proto::limits::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    no_deflate: bool,
    /// For wss://: trust the CA certificates in FILE (PEM) instead of the built-in roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// For wss://: present this client certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// For wss://: accept any server certificate without checking it (DANGEROUS: the
    /// connection is not authenticated).
    #[arg(long, short = 'k')]
    insecure: bool,
    /// Tunnel through this HTTP proxy with CONNECT: http://[user:pass@]host:port.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Connect from this local IP address.
    #[arg(long, value_name = "IP")]
    local_address: Option<std::net::IpAddr>,
    /// Speak HTTP/2 (RFC 8441's extended CONNECT): over wss:// with h2 in ALPN, over
    /// ws:// with prior knowledge (h2c). A server that does not offer it is an error.
    #[arg(long)]
    http2: bool,
    /// Follow 3xx redirects (Authorization and Cookie are dropped for another host).
    #[arg(long)]
    follow_redirects: bool,
    /// The most redirects followed with --follow-redirects.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_redirects: usize,
    /// Send this line once connected (a message, or a command such as "/ping"; repeat
    /// for several), then close with 1000 and exit instead of reading stdin.
    #[arg(long, short = 'x', value_name = "LINE")]
    execute: Vec<String>,
    /// With --execute: keep printing what arrives for this many seconds before closing.
    #[arg(long, short = 'w', value_name = "SECS", default_value = "0", requires = "execute",
          value_parser = parse_wait)]
    wait: Duration,
    /// Print the pings received (pongs are always printed).
    #[arg(long, short = 'P')]
    show_ping_pong: bool,
}

/// `--wait`: a number of seconds, 0 or more.
fn parse_wait(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{text}: {e}"))
        }
        _ => Err(format!("{text}: a number of seconds (0 or more) expected")),
    }
}

/// The commands, as `/help` and `sockeye connect --help` print them.
pub const HELP: &str = "\
Lines starting with / are commands:
/ping [DATA]              send a ping (the pong is printed)
/pong [DATA]              send an unsolicited pong
/binary TEXT              send TEXT's bytes as a binary message
/close [CODE [REASON]]    close (default 1000) and exit once the server answers
/help                     this list
//TEXT                    send /TEXT as text (a line that starts with /)
Ctrl-D or Ctrl-C closes with 1000.";

/// One line of input: a message to send or a command.
#[derive(Debug, PartialEq)]
enum Input {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(CloseFrame),
    Help,
}

impl Input {
    /// Parses a typed (or --execute) line; `Err` says what is wrong with a command.
    fn parse(line: &str) -> Result<Input, String> {
        let Some(command) = line.strip_prefix('/') else {
            return Ok(Input::Text(line.to_owned()));
        };
        if command.starts_with('/') {
            return Ok(Input::Text(command.to_owned()));
        }
        let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
        let control = |what: &str| {
            if rest.len() > 125 {
                Err(format!(
                    "/{what}: at most 125 bytes of data (RFC 6455 §5.5)"
                ))
            } else {
                Ok(rest.as_bytes().to_vec())
            }
        };
        match name {
            "ping" => control("ping").map(Input::Ping),
            "pong" => control("pong").map(Input::Pong),
            "binary" => Ok(Input::Binary(rest.as_bytes().to_vec())),
            "help" => Ok(Input::Help),
            "close" => {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                let code = match code {
                    "" => CloseCode::NORMAL_CLOSURE,
                    code => code
                        .parse::<u16>()
                        .ok()
                        .map(CloseCode)
                        .filter(|c| c.is_sendable())
                        .ok_or_else(|| {
                            format!(
                                "/close: {code} is not a close code that may be sent \
                                 (1000-1003, 1007-1014, 3000-4999)"
                            )
                        })?,
                };
                if reason.len() > 123 {
                    return Err("/close: the reason is at most 123 bytes (RFC 6455 §5.5)".into());
                }
                Ok(Input::Close(CloseFrame::new(code, reason)))
            }
            _ => Err(format!(
                "unknown command /{name} (/help lists them; // sends a line that starts with /)"
            )),
        }
    }
}

/// Where and how the session prints: received messages on stdout, the rest on stderr,
/// each in colour only where anstream's rules allow it, and a prompt when both stdin and
/// stdout are terminals.
struct Console {
    stdout: tokio::io::Stdout,
    out_color: bool,
    err_color: bool,
    prompt: bool,
    /// Whether "> " is on the screen, to be erased before the next line.
    prompting: bool,
    /// The line being typed at the prompt, with the terminal in raw mode; dropped (the
    /// terminal restored) when input ends.
    editor: Option<LineEditor>,
}

/// The styles of what is printed.
const RECEIVED: anstyle::Style = anstyle::AnsiColor::Cyan.on_default();
const CONTROL: anstyle::Style = anstyle::AnsiColor::Blue.on_default();
const STATUS: anstyle::Style = anstyle::AnsiColor::Green.on_default();
const CLOSED: anstyle::Style = anstyle::AnsiColor::Yellow.on_default();
const PROBLEM: anstyle::Style = anstyle::AnsiColor::Red.on_default().bold();

impl Console {
    fn new(interactive: bool) -> Console {
        use std::io::IsTerminal;
        let color = |choice| choice != anstream::ColorChoice::Never;
        Console {
            stdout: tokio::io::stdout(),
            out_color: color(anstream::AutoStream::choice(&std::io::stdout())),
            err_color: color(anstream::AutoStream::choice(&std::io::stderr())),
            prompt: interactive
                && std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal(),
            prompting: false,
            editor: None,
        }
    }

    /// The end of a printed line: in raw mode the terminal no longer turns `\n` into
    /// `\r\n`.
    fn newline(&self) -> &'static str {
        if self.editor.is_some() {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// `text` with its line breaks as the terminal needs them (see [`Console::newline`]).
    fn lines<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.editor.is_some() && text.contains('\n') {
            text.replace('\n', "\r\n").into()
        } else {
            text.into()
        }
    }

    /// Stops editing: the terminal back in its own mode, for the end of the session.
    async fn stop_editing(&mut self) -> std::io::Result<()> {
        if self.editor.is_some() {
            self.unprompt().await?;
            self.editor = None;
        }
        Ok(())
    }

    /// Applies a key to the line being typed; draws it again if it changed. Enter puts
    /// the line on its own row (it stays on the screen, as a terminal would show it).
    async fn key(&mut self, key: crossterm::event::KeyEvent) -> std::io::Result<Edit> {
        let Some(editor) = &mut self.editor else {
            return Ok(Edit::Nothing);
        };
        let edit = editor.key(key);
        match &edit {
            Edit::Redraw => {
                self.prompting = false;
                self.prompt().await?;
            }
            Edit::Line(_) => {
                self.stdout.write_all(b"\r\n").await?;
                self.stdout.flush().await?;
                self.prompting = false;
            }
            _ => {}
        }
        Ok(edit)
    }

    fn paint(on: bool, style: anstyle::Style, text: &str) -> String {
        if on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// Erases the prompt, if shown, so that a line can take its place.
    async fn unprompt(&mut self) -> std::io::Result<()> {
        if self.prompting {
            self.prompting = false;
            self.stdout.write_all(b"\r\x1b[K").await?;
            self.stdout.flush().await?;
        }
        Ok(())
    }

    /// Shows the prompt (on a terminal), and the line being typed after it.
    async fn prompt(&mut self) -> std::io::Result<()> {
        if self.prompt && !self.prompting {
            self.prompting = true;
            let prompt = Self::paint(self.out_color, STATUS, "> ");
            let shown = match &mut self.editor {
                Some(editor) => {
                    // A terminal that does not know its size (0 columns) is taken as 80 wide.
                    let columns = match crossterm::terminal::size() {
                        Ok((columns, _)) if columns > 0 => usize::from(columns),
                        _ => 80,
                    };
                    editor.render(&prompt, 2, columns)
                }
                None => prompt,
            };
            self.stdout.write_all(shown.as_bytes()).await?;
            self.stdout.flush().await?;
        }
        Ok(())
    }

    /// A received message on stdout: `< text`.
    async fn received(&mut self, style: anstyle::Style, text: &str) -> std::io::Result<()> {
        self.unprompt().await?;
        let line = format!(
            "{}{}",
            Self::paint(self.out_color, style, &self.lines(&format!("< {text}"))),
            self.newline()
        );
        self.stdout.write_all(line.as_bytes()).await?;
        self.stdout.flush().await?;
        self.prompt().await
    }

    /// A status line on stderr.
    async fn status(&mut self, style: anstyle::Style, text: &str) -> std::io::Result<()> {
        self.unprompt().await?;
        eprint!(
            "{}{}",
            Self::paint(self.err_color, style, &self.lines(text)),
            self.newline()
        );
        self.prompt().await
    }

    /// The text to print for a received ping or pong's data.
    fn control(kind: &str, data: &[u8]) -> String {
        if data.is_empty() {
            format!("[{kind}]")
        } else {
            format!("[{kind}] {}", String::from_utf8_lossy(data))
        }
    }
}

/// Ctrl-C (SIGINT), caught from when this is made: on Unix the handler is installed at
/// once, so a Ctrl-C right after "connected" is not lost to the default action.
struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Interrupts> {
        Ok(Interrupts {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }

    /// The next Ctrl-C.
    async fn next(&mut self) {
        #[cfg(unix)]
        self.signal.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The line that says how the connection ended: `closed 1000`, `closed 1001 going away:
/// server shutting down`.
fn closed_line(frame: Option<&CloseFrame>) -> String {
    match frame {
        None => format!(
            "closed {} (no status code)",
            CloseCode::NO_STATUS_RECEIVED.0
        ),
        Some(f) if f.code == CloseCode::NORMAL_CLOSURE && f.reason.is_empty() => {
            "closed 1000".to_owned()
        }
        Some(f) => {
            let mut line = format!("closed {} {}", f.code.0, f.code.description());
            if !f.reason.is_empty() {
                line.push_str(": ");
                line.push_str(&f.reason);
            }
            line
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(session(args));
    // Without waiting for the blocking read of stdin that tokio's stdin may have in
    // flight: it ends only at the next line or end of input, which may never come once
    // the server has closed.
    runtime.shutdown_background();
    result
}

fn config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::default();
    config.protocols = args.protocols.clone();
    config.origin = args.origin.clone();
    config.handshake_timeout = Some(Duration::from_secs(args.handshake_timeout));
    config.websocket.max_payload = args.max_payload;
    if args.no_deflate {
        config.per_message_deflate = None;
    }
    if let Some(ca) = &args.ca {
        config.tls.ca_pem = Some(read(ca, "--ca")?);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config.tls.cert_pem = Some(read(cert, "--cert")?);
        config.tls.key_pem = Some(read(key, "--key")?);
    }
    if args.insecure {
        eprintln!(
            "sockeye: warning: --insecure: the server's certificate is not checked \
             (dangerous_accept_any_certificate); anyone on the path can read and change \
             this connection"
        );
        config.tls.dangerous_accept_any_certificate = true;
    }
    if args.http2 {
        config.http2.mode = sockeye::http2::Http2Mode::Required;
    }
    config.proxy = args.proxy.clone();
    config.local_address = args.local_address;
    config.follow_redirects = args.follow_redirects;
    config.max_redirects = args.max_redirects;
    if args.follow_redirects {
        config.redirect = Some(std::sync::Arc::new(|url: &str, _: &mut _| {
            eprintln!("redirected to {url}");
        }));
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected \"Name: value\""))?;
        let name: sockeye::proto::http::HeaderName = name
            .trim()
            .parse()
            .with_context(|| format!("invalid header name in {header:?}"))?;
        let value = value
            .trim()
            .parse()
            .with_context(|| format!("invalid header value in {header:?}"))?;
        config.headers.append(name, value);
    }
    Ok(config)
}

async fn session(args: Args) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    let (ws, response) = match sockeye::connect_maybe_tls_with(&args.url, config).await {
        Ok(ok) => ok,
        Err(Error::UnexpectedResponse(response)) => {
            let status = response.status();
            let body = String::from_utf8_lossy(response.body());
            eprintln!(
                "sockeye: error: unexpected server response: {} {}{}{}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                if body.trim().is_empty() { "" } else { ": " },
                body.trim()
            );
            return Ok(ExitCode::from(2));
        }
        // The URL error names the URL already.
        Err(e @ Error::Url(_)) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot connect to {}", args.url)))
        }
    };
    let interactive = args.execute.is_empty();
    let mut interrupts = Interrupts::new()?;
    let mut console = Console::new(interactive);
    // At a terminal's prompt, keys are read as events and the line edited here.
    let mut events = None;
    if console.prompt {
        console.editor = Some(LineEditor::on_terminal()?);
        events = Some(crossterm::event::EventStream::new());
    }
    let protocol = ws
        .protocol()
        .map(|p| format!(" (subprotocol {p})"))
        .unwrap_or_default();
    let extensions = match ws.extensions() {
        "" => String::new(),
        e => format!(" ({e})"),
    };
    let status = response.status().as_u16();
    let over = if response.version() == sockeye::proto::http::Version::HTTP_2 {
        " over HTTP/2"
    } else {
        ""
    };
    let hint = if console.prompt {
        " (Ctrl-D, Ctrl-C or /close to quit; /help for commands)"
    } else {
        ""
    };
    console
        .status(
            STATUS,
            &format!(
                "connected to {} [{status}]{over}{protocol}{extensions}{hint}",
                args.url
            ),
        )
        .await?;
    let (writer, mut reader) = ws.split();

    // Where input comes from: --execute's lines, then the close after --wait; or stdin.
    let mut execute = args.execute.iter();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    let wait = tokio::time::sleep(Duration::MAX);
    tokio::pin!(wait);
    let mut waiting = false;
    let mut interrupted = false;
    // A Ctrl-C to act on: a signal, or the key at the line editor.
    let mut interrupt = false;
    let mut code = ExitCode::SUCCESS;
    loop {
        // Ctrl-C closes with 1000 as end of input does (the handler replaces the
        // default of ending the process at once); a second one quits without waiting.
        if std::mem::take(&mut interrupt) {
            if interrupted {
                console.stop_editing().await?;
                console.unprompt().await?;
                return Ok(ExitCode::from(130));
            }
            interrupted = true;
            input_open = false;
            waiting = false;
            // The terminal back in its own mode: a second Ctrl-C is a signal again.
            console.stop_editing().await?;
            console.prompt = false;
            console
                .status(STATUS, "closing (Ctrl-C again to quit without waiting)")
                .await?;
            let _ = writer
                .close(Some(CloseFrame::new(CloseCode::NORMAL_CLOSURE, "")))
                .await;
        }
        let next_input = async {
            if let Some(events) = events.as_mut() {
                loop {
                    match events.next().await {
                        Some(Ok(crossterm::event::Event::Key(key))) => return Ok(Typed::Key(key)),
                        Some(Ok(crossterm::event::Event::Resize(..))) => return Ok(Typed::Resize),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(Typed::Line(None)),
                    }
                }
            } else if interactive {
                lines.next_line().await.map(Typed::Line)
            } else {
                Ok(Typed::Line(execute.next().cloned()))
            }
        };
        tokio::select! {
            typed = next_input, if input_open => {
                let line = match typed? {
                    Typed::Line(line) => line,
                    Typed::Resize => {
                        console.prompting = false;
                        console.prompt().await?;
                        continue;
                    }
                    Typed::Key(key) => match console.key(key).await? {
                        Edit::Line(line) => Some(line),
                        Edit::EndOfInput => None,
                        Edit::Interrupt => {
                            interrupt = true;
                            continue;
                        }
                        Edit::Redraw | Edit::Nothing => continue,
                    },
                };
                let Some(line) = line else {
                    input_open = false;
                    console.stop_editing().await?;
                    if interactive {
                        writer.close(Some(CloseFrame::new(CloseCode::NORMAL_CLOSURE, ""))).await?;
                    } else {
                        wait.as_mut().reset(tokio::time::Instant::now() + args.wait);
                        waiting = true;
                    }
                    continue;
                };
                // Enter moved the cursor past the prompt.
                console.prompting = false;
                match Input::parse(&line) {
                    Ok(Input::Text(text)) => writer.send_text(&text).await?,
                    Ok(Input::Binary(data)) => writer.send_binary(&data).await?,
                    Ok(Input::Ping(data)) => writer.ping(&data).await?,
                    Ok(Input::Pong(data)) => writer.pong(&data).await?,
                    Ok(Input::Close(frame)) => {
                        input_open = false;
                        console.stop_editing().await?;
                        writer.close(Some(frame)).await?;
                    }
                    Ok(Input::Help) => {
                        console.unprompt().await?;
                        eprint!("{}{}", console.lines(HELP), console.newline());
                    }
                    Err(why) => {
                        console.status(PROBLEM, &format!("sockeye: {why}")).await?;
                        if !interactive {
                            code = ExitCode::FAILURE;
                        }
                    }
                }
                if input_open {
                    console.prompt().await?;
                }
            },
            () = interrupts.next() => interrupt = true,
            () = &mut wait, if waiting => {
                waiting = false;
                writer.close(Some(CloseFrame::new(CloseCode::NORMAL_CLOSURE, ""))).await?;
            },
            message = reader.next() => match message {
                Some(Ok(Message::Text(text))) => console.received(RECEIVED, &text).await?,
                Some(Ok(Message::UncheckedText(data) | Message::Binary(data))) => {
                    console
                        .received(RECEIVED, &format!("[binary, {} bytes]", data.len()))
                        .await?;
                }
                Some(Ok(Message::Pong(data))) => {
                    console.received(CONTROL, &Console::control("pong", &data)).await?;
                }
                Some(Ok(Message::Ping(data))) => {
                    if args.show_ping_pong {
                        console.received(CONTROL, &Console::control("ping", &data)).await?;
                    }
                }
                Some(Ok(Message::Fragment(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    console.stop_editing().await?;
                    console.prompt = false;
                    console.status(CLOSED, &closed_line(frame.as_ref())).await?;
                    input_open = false;
                    waiting = false;
                }
                Some(Err(e)) => {
                    console.status(PROBLEM, &format!("sockeye: error: {e}")).await?;
                    code = ExitCode::FAILURE;
                }
                None => break,
            },
        }
    }
    console.stop_editing().await?;
    console.unprompt().await?;
    Ok(code)
}

/// What came from the user: a line (`None`: end of input), or at a terminal's prompt a
/// key for the line editor, or a resized terminal.
enum Typed {
    Line(Option<String>),
    Key(crossterm::event::KeyEvent),
    Resize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_commands() {
        assert_eq!(Input::parse("hi /x"), Ok(Input::Text("hi /x".into())));
        assert_eq!(Input::parse("//x"), Ok(Input::Text("/x".into())));
        assert_eq!(Input::parse("/ping"), Ok(Input::Ping(vec![])));
        assert_eq!(Input::parse("/ping a b"), Ok(Input::Ping(b"a b".to_vec())));
        assert_eq!(
            Input::parse("/binary ab"),
            Ok(Input::Binary(b"ab".to_vec()))
        );
        assert_eq!(
            Input::parse("/close"),
            Ok(Input::Close(CloseFrame::new(1000, "")))
        );
        assert_eq!(
            Input::parse("/close 4000 all done"),
            Ok(Input::Close(CloseFrame::new(4000, "all done")))
        );
        assert!(Input::parse("/close 1005").is_err());
        assert!(Input::parse("/close x").is_err());
        assert!(Input::parse(&format!("/ping {}", "x".repeat(126))).is_err());
        assert!(Input::parse("/frobnicate").is_err());
    }

    #[test]
    fn close_lines() {
        assert_eq!(closed_line(Some(&CloseFrame::new(1000, ""))), "closed 1000");
        assert_eq!(
            closed_line(Some(&CloseFrame::new(1001, ""))),
            "closed 1001 going away"
        );
        assert_eq!(
            closed_line(Some(&CloseFrame::new(4000, "done"))),
            "closed 4000 private application code: done"
        );
        assert_eq!(closed_line(None), "closed 1005 (no status code)");
    }
}
