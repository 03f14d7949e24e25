//! A `vtguard run` process as an operator starts it: its stderr collected line by line, killed
//! on drop.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A running `vtguard run`.
pub struct AgentProcess {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl AgentProcess {
    /// Starts `<bin> <global> run --config <config>` (e.g. `global = ["--log-format",
    /// "json"]`), `bin` being the agent binary cargo built for this run (the end-to-end tests
    /// pass `CARGO_BIN_EXE_vtguard-under-test`; the demo, the path `cargo xtask` gives it).
    pub fn spawn(bin: &Path, global: &[&str], config: &Path) -> std::io::Result<Self> {
        let mut child = Command::new(bin)
            .args(global)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        Ok(Self { child, log })
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first log line holding every one of `needles`, waiting up to `within`.
    pub fn find(&self, needles: &[&str], within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if let Some(l) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(l.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first log line containing `needle`; panics with the log after 10 s.
    pub fn wait_for(&self, needle: &str) -> String {
        self.find(&[needle], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("agent never logged {needle:?}; log:\n{}", self.log()))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
