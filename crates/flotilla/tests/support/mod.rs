//! Shared by the binary's test files: a `flotilla` child process whose log lines
//! can be waited for, killed when the test ends, pass or fail.

#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `flotilla ARGS…` to completion, without the caller's `FLOTILLA_SERVER` or
/// `FLOTILLA_CONFIG_DIR`, so that a developer's environment never leaks in.
pub(crate) fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_SERVER")
        .env_remove("FLOTILLA_CONFIG_DIR")
        .output()
        .expect("the flotilla binary runs")
}

/// Output bytes as text, for assertions and messages.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Lines taken off the channel by [`Child::saw`].
    seen: std::sync::Mutex<Vec<String>>,
}

impl Child {
    /// Starts `flotilla ARGS…` with info logs; its stderr lines arrive on a channel.
    pub(crate) fn spawn(args: &[&str]) -> Child {
        Self::spawn_with_env(args, &[])
    }

    /// [`Child::spawn`] with more environment variables.
    pub(crate) fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .envs(env.iter().copied())
            .env("FLOTILLA_LOG", "info")
            .env_remove("FLOTILLA_SERVER")
            .env_remove("FLOTILLA_CONFIG_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the flotilla binary runs");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Child {
            child,
            lines,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether any stderr line so far contains `needle` (without waiting).
    pub(crate) fn saw(&self, needle: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.extend(self.lines.try_iter());
        seen.iter().any(|line| line.contains(needle))
    }

    /// The first stderr line containing `needle`, within 30 s; panics with every
    /// line seen otherwise.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?} in:\n{}", seen.join("\n"));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
