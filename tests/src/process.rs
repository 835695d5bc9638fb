//! A coordinator as its own process: the real `infermine-server` binary with a TOML config,
//! for tests that kill it (`SIGKILL`), stop it (`SIGTERM`, the graceful drain) or run several.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::server_binary;

/// An `infermine-server serve` process on a fixed loopback port.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<tokio::process::Child>,
    config: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

/// A free loopback port (free when asked; the server binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl ServerProcess {
    /// Writes `NAME.toml` in `dir` (listen address and data directory first, then `settings`,
    /// TOML the caller chooses), starts the server with it and waits until it answers.
    pub async fn start(name: &str, dir: &Path, settings: &str) -> Self {
        let port = free_port();
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{settings}",
                data.display()
            ),
        )
        .expect("config");
        let mut server = Self {
            child: None,
            config,
            log: dir.join(format!("{name}.log")),
            base: format!("http://127.0.0.1:{port}"),
        };
        server.start_again().await;
        server
    }

    /// Starts the process (again, after [`Self::kill`] or [`Self::terminate`]) on the same
    /// port, config and data, and waits until it answers `/healthz` (it may not be ready: its
    /// object storage may be down). Its output is appended to the log.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("server log")
        };
        let child = tokio::process::Command::new(server_binary().expect("server binary"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(log())
            .stderr(log())
            .kill_on_drop(true)
            .spawn()
            .expect("start infermine-server");
        self.child = Some(child);
        self.wait_for("/healthz").await;
    }

    /// Waits (60 s at most) until `GET path` answers 200: `/healthz` (alive) or `/readyz`
    /// (database and object storage answer).
    pub async fn wait_for(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(format!("{}{path}", self.base)).await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server at {} never answered {path} with 200; log:\n{}",
                self.base,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ws://127.0.0.1:PORT`
    pub fn ws(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    /// Kills the process at once (`SIGKILL`): no drain, no goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the server");
        }
    }

    /// Asks the process to stop (`SIGTERM`: drain, hand leases back) and waits for it to exit.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().expect("a running server has a pid");
        let sent = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("the server exits within 60 s of SIGTERM")
            .expect("wait for the server");
        assert!(
            status.success(),
            "the server exited with {status}; log:\n{}",
            self.log()
        );
    }

    /// Everything the process (all its runs) wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
