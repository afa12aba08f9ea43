//! A headless Chromium (Debian's `chromium`, installed by .ci/run) driven over the Chrome
//! DevTools Protocol, through Sockeye's own client: a page is opened at a URL, and
//! JavaScript is evaluated in it. Tests use it to check that what `sockeye serve` serves
//! works in a real browser. The browser is killed and its profile removed on drop; every
//! wait is bounded.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{Message, WebSocket};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::STEP;

/// One browser with one page, attached over the DevTools protocol.
pub struct Chromium {
    child: Child,
    devtools: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    profile: PathBuf,
}

impl Chromium {
    /// Starts the browser and opens `url` in a new page.
    pub async fn open(url: &str) -> Chromium {
        Chromium::open_with(url, &[]).await
    }

    /// [`Chromium::open`] with more command-line switches (`--ignore-certificate-errors`).
    pub async fn open_with(url: &str, switches: &[&str]) -> Chromium {
        static BROWSERS: AtomicU64 = AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "sockeye-chromium-{}-{}",
            std::process::id(),
            BROWSERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                // Root in a container has no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(switches)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromium could not be started ({e}): apt-get install chromium")
            });
        // It prints where its DevTools endpoint listens on stderr.
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium ended without a DevTools endpoint");
        })
        .await
        .expect("chromium's DevTools endpoint within 30 s");
        // The rest of its stderr is drained, so that the browser never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let (devtools, _) = tokio::time::timeout(STEP, sockeye::connect(&endpoint))
            .await
            .expect("DevTools connect in time")
            .expect("DevTools WebSocket");
        let mut browser = Chromium {
            child,
            devtools,
            session: String::new(),
            next_id: 0,
            profile,
        };
        let target = browser
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].as_str().expect("a targetId").to_owned();
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a sessionId")
            .to_owned();
        browser
    }

    /// Sends one DevTools command (to the page's session, or to the browser) and returns
    /// its result; events in between are skipped.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.devtools
            .send_text(&command.to_string())
            .await
            .expect("DevTools send");
        loop {
            let message = tokio::time::timeout(STEP, self.devtools.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {STEP:?}"));
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                other => panic!("the DevTools connection ended: {other:?}"),
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value (as JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until it is `true` (an exception counts as
    /// not yet); panics with `what` and the value of `show` after `within`.
    pub async fn wait_for(&mut self, expression: &str, within: Duration, what: &str, show: &str) {
        // Before the page has loaded, what the expression reads may not exist yet.
        let guarded = format!("(() => {{ try {{ return ({expression}) === true; }} catch (e) {{ return false; }} }})()");
        let deadline = Instant::now() + within;
        loop {
            if self.eval(&guarded).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let shown = self
                    .eval(&format!("(() => {{ try {{ return {show}; }} catch (e) {{ return String(e); }} }})()"))
                    .await;
                panic!("{what}: not within {within:?}; the page shows {shown}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The profile goes once the browser is gone (bounded: 5 s).
        let _ = self.child.start_kill();
        for _ in 0..500 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
