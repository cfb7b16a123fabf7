//! `mlstack train launch`: starts the ranks as processes, torchrun-style.
//!
//! Each rank is the same executable with `RANK`, `WORLD_SIZE`, `MASTER_ADDR`
//! (the rendezvous, rank 0's) and `MLSTACK_TRAIN_TOKEN` (a random number
//! every connection must present) in its environment. Their output is
//! streamed with a `[rank r]` prefix. When any rank exits non-zero, the
//! others are killed and the launcher fails naming the first failure; a
//! rank that hangs is caught by its neighbours' collective timeouts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Result, TrainError};

/// Starts `world` copies of `exe args...` and waits for all of them.
pub fn launch(
    exe: &std::path::Path,
    args: &[String],
    world: usize,
    master_addr: &str,
) -> Result<()> {
    if world == 0 {
        return Err(TrainError::Launch("world size 0".into()));
    }
    let token = {
        let mut b = [0u8; 8];
        // The token only has to differ between groups on one machine; the
        // clock and pid make a collision unlikely without a CSPRNG.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        b.copy_from_slice(&t.to_le_bytes());
        u64::from_le_bytes(b)
    };
    let mut children: Vec<Child> = Vec::with_capacity(world);
    let mut pumps = Vec::new();
    for rank in 0..world {
        let mut child = Command::new(exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", master_addr)
            .env("MLSTACK_TRAIN_TOKEN", token.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                TrainError::Launch(format!("starting rank {rank} ({}): {e}", exe.display()))
            })?;
        for (pipe, err) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                false,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                true,
            ),
        ] {
            if let Some(p) = pipe {
                pumps.push(std::thread::spawn(move || {
                    for line in BufReader::new(p).lines().map_while(std::result::Result::ok) {
                        if err {
                            eprintln!("[rank {rank}] {line}");
                        } else {
                            println!("[rank {rank}] {line}");
                        }
                    }
                }));
            }
        }
        children.push(child);
    }
    // Poll: the first rank to fail stops the group.
    let mut done = vec![false; world];
    let mut failure: Option<String> = None;
    while done.iter().any(|d| !d) {
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    done[rank] = true;
                    if !status.success() && failure.is_none() {
                        failure = Some(format!("rank {rank} exited with {status}"));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    done[rank] = true;
                    failure.get_or_insert(format!("rank {rank}: {e}"));
                }
            }
        }
        if failure.is_some() {
            for (rank, child) in children.iter_mut().enumerate() {
                if !done[rank] {
                    let _ = child.kill();
                    let _ = child.wait();
                    done[rank] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pumps {
        let _ = p.join();
    }
    match failure {
        Some(f) => Err(TrainError::Launch(format!(
            "{f}; the other ranks were stopped"
        ))),
        None => Ok(()),
    }
}
