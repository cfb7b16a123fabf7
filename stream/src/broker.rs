//! A local Kafka-protocol broker for tests and benchmarks: `tansu` 0.6.0 with
//! its SQLite storage engine (`cargo install tansu --version 0.6.0 --features
//! libsql,dynostore`, done by `scripts/test.sh`).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct Tansu {
    child: Option<Child>,
    pub addr: String,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

/// Where the `tansu` binary is: `MLSTACK_TANSU_BIN`, then `PATH`, then
/// `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("MLSTACK_TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("tansu");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Config {
        reason: "the tansu broker is not installed: cargo install tansu --version 0.6.0 \
                 --features libsql,dynostore (scripts/test.sh does), or set MLSTACK_TANSU_BIN"
            .into(),
    })
}

impl Tansu {
    /// Starts a broker storing its data under `dir`.
    pub fn start(dir: &Path) -> Result<Tansu> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|source| Error::Io {
                op: "find a free port",
                path: PathBuf::new(),
                source,
            })?;
        let mut t = Tansu {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            bin: tansu_bin()?,
            dir: dir.to_path_buf(),
            port,
        };
        t.restart()?;
        Ok(t)
    }

    /// (Re)starts the process on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            op: "create",
            path: self.dir.clone(),
            source,
        })?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .map_err(|source| Error::Io {
                op: "open broker log",
                path: self.dir.join("tansu.log"),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            op: "open broker log",
            path: self.dir.join("tansu.log"),
            source,
        })?;
        let mut cmd = Command::new(&self.bin);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only the async-signal-safe
            // prctl(2) runs. It makes the kernel SIGKILL the broker when
            // its parent exits, however the parent ends (Ctrl-C, SIGKILL,
            // a panic), so a demo or test never leaves a broker behind.
            // The signal follows the *thread* that spawned it: start a
            // broker from a thread that lives as long as the broker should
            // (a test's thread, the runtime's, never a short-lived one).
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .arg("broker")
            .arg("--storage-engine")
            // tansu resolves the SQLite path against its working directory
            // (an absolute `sqlite:///abs` gets the cwd prefixed), so run it
            // in the data directory with a relative path.
            .arg("sqlite://tansu.db")
            .current_dir(&self.dir)
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| Error::Io {
                op: "spawn",
                path: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(Error::Config {
                    reason: format!(
                        "tansu did not listen on {} within 20 s; see {}/tansu.log",
                        self.addr,
                        self.dir.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Creates a topic (`tansu topic create`).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://{}", self.addr))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .map_err(|source| Error::Io {
                op: "run tansu topic create",
                path: self.bin.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Config {
                reason: format!(
                    "tansu topic create {topic}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
