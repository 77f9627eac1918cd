//! A throw-away PostgreSQL server for tests (`scripts/pg-test-server`), shared
//! by the unit tests and the integration tests (which include this file).
//!
//! One server per test process, started on first use and stopped when the
//! process ends; each test gets a database of its own from [`database`].
//! `WORKCOPY_TEST_PG_URL` names a running server to use instead. A test that
//! needs to stop its server (faults) starts a private one with [`Server::start`].
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running test server: its URL (to its `postgres` database) and directory.
pub struct Server {
    pub url: String,
    pub dir: Option<PathBuf>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-server")
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// Starts a server of its own (stopped when this process ends, or by [`Server::stop`]).
    pub fn start() -> Result<Server, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!(
                "workcopy-pg-{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                port
            ));
            let out = Command::new(script())
                .arg(&dir)
                .arg(port.to_string())
                .arg(std::process::id().to_string())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
            if out.status.success() {
                let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return Ok(Server { url, dir: Some(dir) });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new(script()).arg("stop").arg(&dir).status();
        }
        Err(format!("cannot start a PostgreSQL test server: {last}"))
    }

    /// Stops the server, keeping its data ([`Server::resume`] starts it again).
    pub fn pause(&self) -> Result<(), String> {
        self.ctl("pause")
    }

    pub fn resume(&self) -> Result<(), String> {
        self.ctl("resume")
    }

    pub fn stop(&self) -> Result<(), String> {
        self.ctl("stop")
    }

    fn ctl(&self, what: &str) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("the server is not ours to stop")?;
        let out = Command::new(script()).arg(what).arg(dir).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database on this server; returns its URL.
    pub fn database(&self) -> Result<String, String> {
        let name = format!("wc_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                &self.url,
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(with_database(&self.url, &name))
    }
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    match base.rfind('/') {
        Some(i) if i > "postgres://".len() => format!("{}/{name}", &base[..i]),
        _ => format!("{base}/{name}"),
    }
}

/// The process's shared server.
pub fn shared() -> Result<&'static Server, String> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("WORKCOPY_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => Ok(Server { url, dir: None }),
            _ => Server::start(),
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A new, empty database on the shared server; returns its URL.
pub fn database() -> Result<String, String> {
    shared()?.database()
}
