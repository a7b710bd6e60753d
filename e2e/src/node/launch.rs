//! What runs between fork and the container's program: the short-lived, single-threaded modes of
//! `bulwark-node` that enter namespaces, build the container's filesystem and exec. They are
//! separate processes (not `pre_exec` hooks) because mounting and setns need a process that has
//! no other threads and may allocate freely.
//!
//! A pod is a *sandbox* process holding the pod's network, UTS (hostname) and IPC namespaces.
//! Each container joins them, gets a private mount namespace whose root is an overlay of the
//! host's root filesystem (writes land in a tmpfs that vanishes with the container, like a
//! container's writable layer), with the pod's volumes bind-mounted at their mount paths.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A volume (or one file of one) bind-mounted into a container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Everything `bulwark-node container` needs; the agent writes it as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub sandbox_pid: i32,
    /// A directory of the agent's for this container instance (overlay mount point lives here).
    pub scratch: PathBuf,
    pub mounts: Vec<BindMount>,
    /// Files written into the container's root: /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub files: Vec<(String, String)>,
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}

fn cstr(s: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).expect("no NUL in paths")
}

fn check(result: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if result != 0 {
        bail!("{}: {}", what(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let (s, t, f, d) = (cstr(source), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    check(rc, || {
        format!("mount {source} on {} ({fstype})", target.display())
    })
}

fn join_namespaces(pid: i32, kinds: &[(&str, libc::c_int)]) -> Result<()> {
    for (kind, flag) in kinds {
        let path = format!("/proc/{pid}/ns/{kind}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a namespace file descriptor we hold open.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), *flag) };
        check(rc, || format!("setns {path}"))?;
    }
    Ok(())
}

const POD_NAMESPACES: [(&str, libc::c_int); 3] = [
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
];

/// `bulwark-node sandbox HOSTNAME`: creates the pod's namespaces, brings up loopback, says
/// "ready" on stdout and sleeps until killed. Its death (or the agent's) frees the namespaces,
/// and with them the pod's veth, so nothing outlives it.
pub fn sandbox(hostname: &str) -> Result<()> {
    // SAFETY: unshare affects only this single-threaded process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) };
    check(rc, || "unshare(net, uts, ipc)".into())?;
    let name = hostname.as_bytes();
    // SAFETY: valid buffer and length.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) },
        || "sethostname".into(),
    )?;
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip")?;
    anyhow::ensure!(status.success(), "ip link set lo up: {status}");
    println!("ready");
    loop {
        // SAFETY: pause(2) just sleeps until a signal.
        unsafe { libc::pause() };
    }
}

/// `bulwark-node container SPEC.json`: joins the sandbox, builds the root and execs the program.
pub fn container(spec_path: &Path) -> Result<()> {
    let spec: LaunchSpec = serde_json::from_slice(&std::fs::read(spec_path)?)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    join_namespaces(spec.sandbox_pid, &POD_NAMESPACES)?;
    // SAFETY: unshare affects only this single-threaded process.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "unshare(mount)".into()
    })?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        "none",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )?;

    let layer = spec.scratch.join("layer");
    let root = spec.scratch.join("root");
    mount("tmpfs", &layer, "tmpfs", 0, "mode=0755")?;
    std::fs::create_dir_all(layer.join("upper"))?;
    std::fs::create_dir_all(layer.join("work"))?;
    mount(
        "overlay",
        &root,
        "overlay",
        0,
        &format!(
            "lowerdir=/,upperdir={},workdir={}",
            layer.join("upper").display(),
            layer.join("work").display()
        ),
    )?;
    for dir in ["proc", "sys", "dev"] {
        mount(
            &format!("/{dir}"),
            &root.join(dir),
            "",
            libc::MS_BIND | libc::MS_REC,
            "",
        )?;
    }
    // A pod's own /dev/shm, as a container runtime gives it (PostgreSQL uses it).
    mount(
        "shm",
        &root.join("dev/shm"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;

    // Pivot so that every path below resolves inside the container's root (a host symlink such
    // as /var/run -> /run must not lead a mkdir out of it); the host stays reachable at /.host
    // until the volumes are bound.
    let old = root.join(".host");
    std::fs::create_dir_all(&old)?;
    let (new_root, put_old) = (cstr(&root), cstr(&old));
    // SAFETY: pivot_root(2) via syscall with two valid paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(rc as libc::c_int, || "pivot_root".into())?;
    std::env::set_current_dir("/")?;
    for bind in &spec.mounts {
        let source =
            Path::new("/.host").join(bind.source.strip_prefix("/").unwrap_or(&bind.source));
        let target = Path::new(&bind.target);
        if source.is_dir() {
            std::fs::create_dir_all(target)
                .with_context(|| format!("creating mount point {}", target.display()))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(target)?;
        }
        mount(
            &source.display().to_string(),
            target,
            "",
            libc::MS_BIND | libc::MS_REC,
            "",
        )?;
        if bind.read_only {
            mount(
                "none",
                target,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                "",
            )?;
        }
    }
    let host = cstr("/.host");
    // SAFETY: lazy unmount of the old root we just pivoted away from.
    check(
        unsafe { libc::umount2(host.as_ptr(), libc::MNT_DETACH) },
        || "umount /.host".into(),
    )?;
    std::fs::remove_dir("/.host")?;
    for (path, contents) in &spec.files {
        // The host's file may be a symlink (resolv.conf often is); replace it in this root only.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, contents).with_context(|| format!("writing {path}"))?;
    }
    let cwd = spec.working_dir.as_deref().unwrap_or("/");
    std::fs::create_dir_all(cwd)?;
    become_user(spec.uid, spec.gid, &spec.supplemental_groups)?;
    std::env::set_current_dir(cwd).with_context(|| format!("workingDir {cwd}"))?;
    exec(&spec.program, &spec.argv, &spec.env)
}

/// `bulwark-node enter PID UID GID -- COMMAND...`: runs COMMAND inside a running container (its
/// namespaces and root), for exec probes.
pub fn enter(pid: i32, uid: u32, gid: u32, command: &[String]) -> Result<()> {
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    let mut kinds = POD_NAMESPACES.to_vec();
    kinds.push(("mnt", libc::CLONE_NEWNS));
    join_namespaces(pid, &kinds)?;
    // SAFETY: fchdir to the container's root directory fd, then chroot to it.
    check(
        unsafe { libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(&root)) },
        || "fchdir".into(),
    )?;
    check(unsafe { libc::chroot(cstr(".").as_ptr()) }, || {
        "chroot".into()
    })?;
    std::env::set_current_dir("/")?;
    become_user(uid, gid, &[])?;
    let program = command.first().context("an exec probe needs a command")?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    exec(Path::new(program), command, &env)
}

fn become_user(uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: plain credential syscalls on this process; groups outlives the call.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()), || {
            "setgroups".into()
        })?;
        check(libc::setgid(gid), || format!("setgid {gid}"))?;
        check(libc::setuid(uid), || format!("setuid {uid}"))?;
        // Changing credentials clears the parent-death signal; the container must still die with
        // its node agent.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), || {
            "prctl".into()
        })?;
    }
    Ok(())
}

fn exec(program: &Path, argv: &[String], env: &[(String, String)]) -> Result<()> {
    let program_c = cstr(program);
    let argv_c: Vec<CString> = argv.iter().map(cstr).collect();
    let env_c: Vec<CString> = env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings; execvpe only returns on failure.
    unsafe { libc::execvpe(program_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    bail!(
        "exec {}: {}",
        program.display(),
        std::io::Error::last_os_error()
    )
}
