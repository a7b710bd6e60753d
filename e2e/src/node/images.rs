//! The one table that maps container images to programs installed on this machine. There is no
//! image store: a pod "pulls" nothing, its container runs the mapped program over the host's
//! filesystem. An image that is not in the table leaves its container Waiting.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Image repositories and what runs them; passed to each node agent as `--image REPO=PATH`.
/// PATH is the entrypoint; a container `command` naming another program is looked up in the
/// entrypoint's directory, then in the system directories.
#[derive(Clone, Debug, Default)]
pub struct ImageTable {
    entries: Vec<(String, PathBuf)>,
}

/// The image Bulwark's chart runs (charts/bulwark/values.yaml `image.repository`).
pub const BULWARK_IMAGE: &str = "ghcr.io/bulwark-dev/bulwark";
/// PostgreSQL's official image, which DatabaseCluster instance pods run by default.
pub const POSTGRES_IMAGE: &str = "docker.io/library/postgres";
/// ISC's BIND9 image, which the test bed maps to this machine's `named`.
pub const BIND9_IMAGE: &str = "docker.io/internetsystemsconsortium/bind9";
/// A tiny HTTP server for tests (`bulwark-testpod`): health toggles, files, outbound fetches.
pub const TESTPOD_IMAGE: &str = "bulwark.dev/testpod";

/// Where a container finds its image's own programs (bind-mounted read-only).
pub const IMAGE_BIN: &str = "/usr/local/bin";

/// A container's program: where it is on the host, where the container runs it from, and argv.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub host_path: PathBuf,
    pub path: PathBuf,
    pub argv: Vec<String>,
    /// The image's own program (bound into the container), not a system one.
    pub own: bool,
}

const SYSTEM_DIRS: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"];

impl ImageTable {
    /// Parses `REPO=PATH` entries (the agent's `--image` flags).
    pub fn parse(entries: &[String]) -> Result<Self> {
        let entries = entries
            .iter()
            .map(|entry| {
                let (repo, path) = entry
                    .split_once('=')
                    .with_context(|| format!("image entry {entry:?} is not REPO=PATH"))?;
                Ok((repo.to_string(), PathBuf::from(path)))
            })
            .collect::<Result<_>>()?;
        Ok(Self { entries })
    }

    pub fn to_args(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(repo, path)| format!("--image={repo}={}", path.display()))
            .collect()
    }

    pub fn with(mut self, repository: &str, entrypoint: &Path) -> Self {
        self.entries
            .push((repository.to_string(), entrypoint.to_path_buf()));
        self
    }

    fn entrypoint(&self, image: &str) -> Option<&Path> {
        let repository = repository_of(image);
        self.entries
            .iter()
            .find(|(repo, _)| repo == repository || repo.rsplit('/').next() == Some(repository))
            .map(|(_, path)| path.as_path())
    }

    /// The program and argv for a container: `command` replaces the entrypoint and `args` follow
    /// it, as an image's ENTRYPOINT and CMD would. A command under one of the container's
    /// `mount_paths` is run from there (a program an init container put in a shared volume).
    /// Errors name the image or program not found.
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
        mount_paths: &[&str],
    ) -> Result<Resolved> {
        let Some(entrypoint) = self.entrypoint(image) else {
            bail!(
                "image {image:?} is not mapped to a program on this node (images: {})",
                self.describe()
            );
        };
        let (host_path, mut argv) = match command.split_first() {
            None => (entrypoint.to_path_buf(), vec![]),
            Some((first, rest)) if in_volume(first, mount_paths) => {
                let mut argv = vec![first.clone()];
                argv.extend(rest.iter().cloned());
                (PathBuf::from(first), argv)
            }
            Some((first, rest)) => {
                let program = find_program(first, entrypoint).with_context(|| {
                    format!("command {first:?} of image {image:?} is not installed on this node")
                })?;
                let mut argv = vec![first.clone()];
                argv.extend(rest.iter().cloned());
                (program, argv)
            }
        };
        // The image's own programs may live where a non-root user cannot reach them (a build
        // directory under /root); the container sees them in its own /usr/local/bin.
        let own = host_path.parent() == entrypoint.parent();
        let path = match own {
            true => Path::new(IMAGE_BIN).join(host_path.file_name().unwrap_or_default()),
            false => host_path.clone(),
        };
        if argv.is_empty() {
            argv.push(path.display().to_string());
        }
        argv.extend(args.iter().cloned());
        Ok(Resolved {
            host_path,
            path,
            argv,
            own,
        })
    }

    fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|(repo, _)| repo.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An absolute path below a mount point: it exists only inside the container.
fn in_volume(program: &str, mount_paths: &[&str]) -> bool {
    let program = Path::new(program);
    program.is_absolute()
        && mount_paths
            .iter()
            .any(|mount| program.starts_with(mount) && program != Path::new(mount))
}

/// `registry/path/name:tag@digest` → `registry/path/name`.
pub fn repository_of(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    }
}

/// An absolute program that exists is used as is; otherwise its file name is looked up next to
/// the image's entrypoint (`bulwark` → the built binary) and then in the system directories.
fn find_program(name: &str, entrypoint: &Path) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.is_absolute() && path.is_file() {
        return Some(path.to_path_buf());
    }
    let file = path.file_name()?;
    if entrypoint.file_name() == Some(file) {
        return Some(entrypoint.to_path_buf());
    }
    entrypoint
        .parent()
        .into_iter()
        .chain(SYSTEM_DIRS.iter().map(Path::new))
        .map(|dir| dir.join(file))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (tempfile::TempDir, ImageTable) {
        let dir = tempfile::tempdir().unwrap();
        for program in ["bulwark", "helper"] {
            std::fs::write(dir.path().join(program), "").unwrap();
        }
        let table = ImageTable::default().with(BULWARK_IMAGE, &dir.path().join("bulwark"));
        (dir, table)
    }

    #[test]
    fn tags_and_digests_do_not_change_the_repository() {
        assert_eq!(
            repository_of("ghcr.io/bulwark-dev/bulwark:0.1.0"),
            BULWARK_IMAGE
        );
        assert_eq!(
            repository_of("localhost:5000/x@sha256:ab"),
            "localhost:5000/x"
        );
        assert_eq!(repository_of("localhost:5000/x"), "localhost:5000/x");
    }

    #[test]
    fn command_replaces_the_entrypoint_and_the_image_programs_are_bound_in() {
        let (dir, table) = table();
        let entry = table
            .resolve("ghcr.io/bulwark-dev/bulwark:1", &[], &["run".into()], &[])
            .unwrap();
        assert_eq!(entry.host_path, dir.path().join("bulwark"));
        assert!(entry.own);
        assert_eq!(entry.argv, ["/usr/local/bin/bulwark", "run"]);
        let helper = table
            .resolve(BULWARK_IMAGE, &["helper".into()], &[], &[])
            .unwrap();
        assert_eq!(
            (helper.path.as_path(), helper.own),
            (Path::new("/usr/local/bin/helper"), true)
        );
        let system = table
            .resolve(
                BULWARK_IMAGE,
                &["sh".into(), "-c".into()],
                &["exit 3".into()],
                &[],
            )
            .unwrap();
        assert!(!system.own && system.path.ends_with("sh"), "{system:?}");
        assert_eq!(system.argv, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn a_program_in_a_volume_runs_from_inside_the_container() {
        let (_dir, table) = table();
        let copied = table
            .resolve(
                BULWARK_IMAGE,
                &["/bulwark/bulwark".into()],
                &["instance".into()],
                &["/var/lib/data", "/bulwark"],
            )
            .unwrap();
        assert_eq!(copied.path, Path::new("/bulwark/bulwark"));
        assert!(!copied.own);
        assert_eq!(copied.argv, ["/bulwark/bulwark", "instance"]);
        let outside = table.resolve(
            BULWARK_IMAGE,
            &["/elsewhere/bulwark".into()],
            &[],
            &["/bulwark"],
        );
        assert!(
            outside.unwrap().path.ends_with("bulwark"),
            "found by name next to the entrypoint"
        );
    }

    #[test]
    fn an_unmapped_image_is_named_in_the_error() {
        let error = table().1.resolve("nginx:1.27", &[], &[], &[]).unwrap_err();
        assert!(
            format!("{error}").contains("\"nginx:1.27\" is not mapped"),
            "{error}"
        );
    }
}
