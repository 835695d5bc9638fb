//! The suite's own S3-compatible server (`scripts/s3-test.sh`: Garage, or s3s-fs with
//! `INFERMINE_S3_TEST_SERVER=s3s-fs`), which it can stop and start again on the same port and
//! data, the way an operator's S3 goes away and comes back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The access key and secret `scripts/s3-test.sh` configures.
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Debug)]
pub struct S3Server {
    dir: PathBuf,
    pub endpoint: String,
    port: u16,
    /// The server's command line, read from `/proc` while it runs, to start it again.
    command: Vec<String>,
    /// The server once this suite started it again (reaped when it stops).
    restarted: std::sync::Mutex<Option<std::process::Child>>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-test.sh")
}

impl S3Server {
    /// Starts a server in `dir` (which must not exist yet or be empty).
    pub fn start(dir: &Path) -> Self {
        let output = std::process::Command::new(script())
            .env("INFERMINE_S3_TEST_DIR", dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/s3-test.sh");
        assert!(
            output.status.success(),
            "scripts/s3-test.sh could not start an S3 server (its output is above)"
        );
        let endpoint = String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned();
        let port = endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("scripts/s3-test.sh printed `{endpoint}`, not a URL"));
        let pid = read_pid(dir);
        let command = std::fs::read(format!("/proc/{pid}/cmdline"))
            .expect("the S3 server's command line")
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        Self {
            dir: dir.to_owned(),
            endpoint,
            port,
            command,
            restarted: std::sync::Mutex::new(None),
        }
    }

    /// Stops the server (`SIGTERM`) and waits until its port is closed. Its data stays.
    pub async fn stop(&self) {
        let pid = read_pid(&self.dir);
        let sent = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill {pid} (the S3 server) failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.running(pid) || self.listening().await {
            assert!(
                Instant::now() < deadline,
                "the S3 server did not stop within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server again with the command line it ran with, on the same port and data.
    pub async fn start_again(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("restarted.log"))
            .expect("S3 log");
        let (program, args) = self.command.split_first().expect("a command line");
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the S3 server again");
        // `scripts/s3-test.sh stop` finds it by this file.
        std::fs::write(self.dir.join("pid"), child.id().to_string()).expect("pid file");
        *self.restarted.lock().expect("lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.listening().await {
            assert!(
                Instant::now() < deadline,
                "the S3 server did not come back within 30 s; see {}",
                self.dir.join("restarted.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether process `pid` still runs (a child of this suite's is reaped once it exited).
    fn running(&self, pid: u32) -> bool {
        let mut restarted = self.restarted.lock().expect("lock");
        if let Some(child) = restarted.as_mut()
            && child.id() == pid
        {
            return matches!(child.try_wait(), Ok(None));
        }
        Path::new(&format!("/proc/{pid}")).exists()
    }

    async fn listening(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn read_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", dir.join("pid").display()))
}
