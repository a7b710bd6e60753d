//! Child processes that cannot outlive the test run.
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills it when its parent dies,
//! even by SIGKILL. The signal is tied to the *thread* that forked, so all children are forked
//! by one thread that lives as long as the process, not by a short-lived test thread.

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("bulwark-e2e-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this loop (and thread) ends only with the process.
            })
            .expect("spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `command` in its own process group, to be SIGKILLed by the kernel when this process
/// dies (however it dies).
pub fn spawn_bound(mut command: Command) -> std::io::Result<Child> {
    // SAFETY: prctl and setpgid are async-signal-safe and touch only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((command, tx))
        .expect("spawner thread is alive");
    rx.recv().expect("spawner replies")
}

/// A running child whose output goes to `log`; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child =
            spawn_bound(command).with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.into(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "{} exited with {status}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process ID while it has not been reaped.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Waits up to `timeout` for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, a grace period, then SIGKILL of the whole process group.
    pub fn stop(&mut self, grace: Duration) {
        stop_all(std::slice::from_mut(self), grace);
    }

    /// After SIGTERM: waits out what is left of the grace period, then SIGKILLs the whole
    /// process group.
    fn finish_stop(&mut self, deadline: Instant) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return;
        };
        if self
            .wait_exit(deadline.saturating_duration_since(Instant::now()))
            .is_none()
        {
            // SAFETY: kill(2) on the child's own process group (setpgid in pre_exec).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            self.wait_exit(Duration::from_secs(5));
        }
        self.child = None;
    }
}

/// Stops every process in `processes` at once: SIGTERM to all, then one shared grace period,
/// then SIGKILL for those still running. A control plane's dozen components take one grace
/// period to stop, not one each.
pub fn stop_all(processes: &mut [Process], grace: Duration) {
    for process in processes.iter() {
        process.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for process in processes.iter_mut() {
        process.finish_stop(deadline);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A TCP port free on every local address (bound on the wildcard, then released): callers bind
/// it on loopback or on the pod network's gateway, so a port free on loopback alone is not enough.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port())
}
