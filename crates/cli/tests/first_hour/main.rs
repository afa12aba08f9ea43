//! The first hour of a new user (issue 21), end to end over the real binary and loopback
//! sockets: the messages a mistake gets, `connect`'s interactive session, `serve`'s
//! shutdown, `bench`'s report, the help. Every wait is bounded.

mod bench;
mod connect;
mod help;
mod messages;
mod readme;
mod serve;

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::STEP;

/// The `sockeye` binary, killed when its handle is dropped, with colour left to the
/// defaults (stdout and stderr are pipes here).
fn sockeye() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command.kill_on_drop(true).env_remove("NO_COLOR");
    command
}

/// Runs `sockeye <args>` with empty stdin to its end, bounded.
async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(STEP, sockeye().args(args).stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|_| panic!("sockeye {args:?} ends in time"))
        .expect("run sockeye")
}

/// `sockeye <args>`'s stderr as text.
fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A server process (killed when dropped) and the address it announced.
struct Server {
    addr: SocketAddr,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Starts `sockeye <args>` (a server with its own `--listen`), and reads the address from
/// its first stdout line, which starts with `prefix`.
async fn start(args: &[&str], prefix: &str) -> Server {
    let mut command = sockeye();
    command.args(args);
    let (addr, child, stdout) = common::spawn_announced(command, prefix).await;
    Server {
        addr,
        child,
        stdout,
    }
}

/// `sockeye echo` on an ephemeral loopback port.
async fn echo_server(extra: &[&str]) -> Server {
    let mut args = vec!["echo", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start(&args, "sockeye echo listening on ws://").await
}

/// A loopback port nothing listens on (free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "sockeye-first-hour-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files in a temporary directory: a certificate for localhost and 127.0.0.1, its
/// key, and (from [`ca_signed`]) the CA that signed it.
struct Pem {
    _dir: TempDir,
    cert: String,
    key: String,
    ca: Option<String>,
}

/// A self-signed certificate for localhost; `ca`: marked as a CA (a CA used as the
/// server's own certificate, a common first attempt).
fn self_signed(ca: bool) -> Pem {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key).unwrap();
    let dir = TempDir::new("pem");
    Pem {
        cert: dir.write("cert.pem", &cert.pem()),
        key: dir.write("key.pem", &key.serialize_pem()),
        ca: None,
        _dir: dir,
    }
}

/// A CA and a server certificate it signed for localhost and 127.0.0.1.
fn ca_signed() -> Pem {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = TempDir::new("pki");
    Pem {
        cert: dir.write("cert.pem", &cert.pem()),
        key: dir.write("key.pem", &key.serialize_pem()),
        ca: Some(dir.write("ca.pem", &ca.pem())),
        _dir: dir,
    }
}

/// `sockeye echo` serving wss:// with `pem`.
async fn tls_echo(pem: &Pem) -> Server {
    start(
        &[
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &pem.cert,
            "--tls-key",
            &pem.key,
        ],
        "sockeye echo listening on wss://",
    )
    .await
}

/// `command` under a pseudo-terminal (util-linux `script`) with `env`, no colour settings
/// of its own, stdin and stdout piped.
fn terminal(command: &str, env: &[(&str, &str)]) -> Command {
    let mut script = Command::new("script");
    script
        .args(["-qec", command, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    script
}

/// Runs `command` under a pseudo-terminal (util-linux `script`), typing `input`;
/// returns everything the terminal showed, or `None` where `script` is not installed.
async fn on_a_terminal(command: &str, input: &str, env: &[(&str, &str)]) -> Option<String> {
    let found = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // Never skipped: a terminal test that does not run cannot fail.
    assert!(
        found,
        "util-linux `script` is required for the terminal tests (Debian: bsdutils)"
    );
    let mut child = terminal(command, env).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .expect("the terminal session ends in time")
        .unwrap();
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}
