//! What several of the CLI's test files share.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

#[allow(dead_code)] // only the browser tests drive Chromium
pub mod chromium;

/// Any single step longer than this is a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// Spawns `command`, a server listening on an ephemeral port, and reads the address from
/// its first stdout line, which must start with `prefix` followed by the address (up to
/// a `/` or a space). The rest of its stdout is returned to read on.
pub async fn spawn_announced(
    mut command: Command,
    prefix: &str,
) -> (SocketAddr, Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sockeye");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("the server announces itself in time")
        .unwrap()
        .expect("a first line on stdout");
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    let addr = rest
        .split(['/', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"));
    (addr, child, stdout)
}

/// `sockeye echo <args> --listen 127.0.0.1:0` as a child process (killed when dropped), and
/// the address it announces on its first stdout line.
#[allow(dead_code)] // not every test binary that shares this file starts `sockeye echo`
pub async fn echo_process(args: &[&str]) -> (SocketAddr, Child) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command
        .arg("echo")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .kill_on_drop(true);
    let (addr, child, _) = spawn_announced(command, "sockeye echo listening on ws://").await;
    (addr, child)
}
