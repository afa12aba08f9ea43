//! The README and the test script a newcomer runs: two commands first, then getting
//! started; the test script's Autobahn step skipped only when asked, loudly; the harness
//! it needs is in the repository.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{run, TempDir, STEP};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The text of `## title` up to the next `## ` heading.
fn section(text: &str, title: &str) -> String {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The fenced code blocks of `text` with the given language.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let end = body.find("```").unwrap();
        found.push(body[..end].to_owned());
        rest = &body[end + 3..];
    }
    found
}

#[tokio::test]
async fn the_readme_has_two_commands_then_getting_started() {
    let text = readme();
    let two = section(&text, "Two commands");
    let commands = blocks(&two, "sh");
    assert_eq!(commands.len(), 2, "{two}");
    assert!(
        commands.iter().all(|c| c.lines().count() == 1),
        "{commands:?}"
    );
    assert!(commands[0].starts_with("cargo run --release -p sockeye-cli -- serve "));
    assert!(commands[1].starts_with("./scripts/test.sh "));
    assert!(two.contains("a Python 2.7"), "{two}");
    assert!(two.contains("pyenv install 2.7.18"), "{two}");
    assert!(
        two.contains("SOCKEYE_SKIP_AUTOBAHN=1 ./scripts/test.sh"),
        "{two}"
    );

    // Getting started comes before the details.
    let started = text.find("\n## Getting started\n").unwrap();
    assert!(started < text.find("\n## The library in detail\n").unwrap());
    assert!(started < text.find("\n## The command line\n").unwrap());
    let started = section(&text, "Getting started");
    let toml = blocks(&started, "toml").concat();
    for dependency in ["sockeye = ", "tokio = ", "futures-util = "] {
        assert!(toml.contains(dependency), "{toml}");
    }
    assert!(
        started.contains("cargo install --path crates/cli"),
        "{started}"
    );
    let manifest = std::fs::read_to_string(repo().join("crates/cli/Cargo.toml")).unwrap();
    assert!(manifest.contains("[[bin]]\nname = \"sockeye\""));

    // Nothing outside the repository.
    assert!(!text.contains("../"), "a path outside the repository");
    assert!(
        !text.contains("AUTOBAHN_HARNESS"),
        "the harness is in the repository"
    );
}

/// Each `sockeye` line of Getting started is a command the binary takes (checked with
/// `--help` appended, which clap answers only once the words before it parse).
#[tokio::test]
async fn the_getting_started_commands_are_accepted() {
    let started = section(&readme(), "Getting started");
    let mut checked = 0;
    for block in blocks(&started, "sh") {
        for line in block.lines() {
            let command = line.split('#').next().unwrap().trim();
            let Some(args) = command.strip_prefix("sockeye") else {
                continue;
            };
            let mut args: Vec<&str> = args.split_whitespace().collect();
            args.push("--help");
            let output = run(&args).await;
            assert!(
                output.status.success(),
                "{command}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{started}");
}

/// A directory of stand-ins for `cargo`, `node`, `npm`, a Python 2.7, the Autobahn
/// harness and the soak script that log their arguments to `log`.
struct Shims {
    dir: TempDir,
    log: PathBuf,
}

impl Shims {
    fn new() -> Shims {
        let dir = TempDir::new("shims");
        let log = dir.0.join("log");
        for name in ["cargo", "node", "npm", "python2.7", "harness", "soak"] {
            let script = format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", log.display());
            let path = dir.write(name, &script);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        Shims { dir, log }
    }

    /// `scripts/test.sh` with only the stand-ins and the system's tools on PATH, and
    /// `env`; returns (exit code, stderr, what the stand-ins were asked).
    async fn test_sh(&self, env: &[(&str, String)]) -> (Option<i32>, String, String) {
        let home = self.dir.0.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let output = tokio::time::timeout(
            STEP,
            tokio::process::Command::new("bash")
                .arg("scripts/test.sh")
                .current_dir(repo())
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", self.dir.0.display()))
                .env("HOME", &home)
                .env("AUTOBAHN_VENV", self.dir.0.join("no-venv"))
                .env("SOAK_SCRIPT", self.dir.0.join("soak"))
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("test.sh with stand-ins ends in time")
        .unwrap();
        let asked = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            asked,
        )
    }
}

#[tokio::test]
async fn test_sh_skips_only_the_autobahn_step_and_says_so() {
    let shims = Shims::new();
    let harness = shims.dir.0.join("harness").display().to_string();
    let python = shims.dir.0.join("python2.7").display().to_string();

    let (code, stderr, asked) = shims
        .test_sh(&[
            ("SOCKEYE_SKIP_AUTOBAHN", "1".into()),
            ("AUTOBAHN_HARNESS", harness.clone()),
        ])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    // At the start and at the end.
    assert_eq!(
        stderr.matches("SKIPPED: the Autobahn|Testsuite").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("conformance was NOT checked"), "{stderr}");
    for step in [
        "npm ci",
        "cargo fmt",
        "cargo clippy",
        "cargo test --locked --workspace",
        "soak 200 20",
    ] {
        assert!(asked.contains(step), "{step} skipped too:\n{asked}");
    }
    assert!(!asked.contains("harness"), "{asked}");
    assert!(!asked.contains("cargo build --release"), "{asked}");

    // Not asked: the Autobahn step runs, in both roles, through the harness.
    let (code, stderr, asked) = shims
        .test_sh(&[("AUTOBAHN_HARNESS", harness), ("AUTOBAHN_PYTHON", python)])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("SKIPPED"), "{stderr}");
    assert_eq!(asked.matches("harness server ").count(), 2, "{asked}");
    assert_eq!(asked.matches("harness client ").count(), 1, "{asked}");
}

/// With no Python 2.7 anywhere, the script says what to do before it runs anything.
#[tokio::test]
async fn test_sh_without_a_python_27_says_how_to_get_one_first() {
    if ["/usr/bin/python2.7", "/usr/bin/python2", "/bin/python2.7"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!("skipped: this system has a Python 2.7 on /usr/bin");
        return;
    }
    let shims = Shims::new();
    std::fs::remove_file(shims.dir.0.join("python2.7")).unwrap();
    let (code, stderr, asked) = shims.test_sh(&[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("needs a Python 2.7"), "{stderr}");
    assert!(stderr.contains("pyenv install 2.7.18"), "{stderr}");
    assert!(stderr.contains("SOCKEYE_SKIP_AUTOBAHN=1"), "{stderr}");
    assert_eq!(asked, "", "nothing ran first");
}

/// The harness `conformance/autobahn.sh` runs is in the repository, and is a valid bash
/// script. (It runs against `sockeye echo` in the Autobahn step of `scripts/test.sh`,
/// which builds wstest's virtualenv first.)
#[tokio::test]
async fn the_autobahn_harness_is_in_the_repository() {
    let script = std::fs::read_to_string(repo().join("conformance/autobahn.sh")).unwrap();
    assert!(script.contains("${AUTOBAHN_HARNESS:-conformance/harness.sh}"));
    let checked = std::process::Command::new("bash")
        .args(["-n", "conformance/harness.sh"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
}
