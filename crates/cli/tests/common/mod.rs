//! What several of the CLI's test files share.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Any single step longer than this is a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// `sockeye echo <args> --listen 127.0.0.1:0` as a child process (killed when dropped), and
/// the address it announces on its first stdout line.
pub async fn echo_process(args: &[&str]) -> (SocketAddr, Child) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockeye"))
        .arg("echo")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sockeye echo");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("the server announces itself in time")
        .unwrap()
        .expect("a first line on stdout");
    let addr = line
        .strip_prefix("sockeye echo listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (addr, child)
}
