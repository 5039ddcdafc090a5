//! Each managed browser is confined by the kernel (Landlock) before Chrome runs: it may read
//! what Chrome needs to run (its executable and libraries, fonts, certificates, `/proc`,
//! `/sys`, a few files of `/etc` and `/dev`), read and write only its own directories (its
//! user-data directory, its private temp and its downloads), and open TCP connections only
//! to its own gateway's ports. Nothing of the data directory beyond that: not the token
//! secret, not the API key, not another session's profile, files or browser.
//!
//! Landlock needs no privilege and holds for root as for any user, and for every process
//! the browser starts (renderers, the network service, helpers). The ruleset is built in
//! the broker before the fork; the child only calls `prctl` and `landlock_restrict_self`
//! (both async-signal-safe) between fork and exec.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};

/// The newest Landlock ABI whose rights the broker asks for; older kernels give what they
/// have (best effort), newer ones are asked for no right this code does not know.
const TARGET_ABI: ABI = ABI::V7;

/// Trees a browser may read and execute from (those that exist): the system's programs and
/// libraries, fonts and their caches, and the kernel's views of processes and devices.
const READ_TREES: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/var/cache/fontconfig",
    // Chrome's own (Debian's wrapper, policies) and the system's configuration it reads;
    // not all of `/etc`: a root broker's browser could read `/etc/shadow`.
    "/etc/chromium",
    "/etc/chromium.d",
    "/etc/fonts",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/mime.types",
    "/etc/xdg",
    "/etc/os-release",
    "/etc/lsb-release",
    "/etc/debian_version",
    "/etc/machine-id",
    "/etc/default/chromium",
];

/// Device files a browser may also write to.
const WRITE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// How browsers are confined on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// By Landlock, at this ABI; `network` when TCP connects are confined too (ABI 4+).
    Landlock { abi: i32, network: bool },
    /// Not at all: the kernel has no Landlock and the operator allowed unconfined browsers.
    Off { reason: String },
}

impl Confinement {
    /// What the kernel offers, or why browsers cannot be confined.
    pub fn probe() -> Result<Confinement, String> {
        let abi = landlock_abi();
        if abi < 1 {
            return Err(match abi {
                -1 => "the kernel has no Landlock (not built in, or not in the lsm= boot list)".into(),
                _ => format!("Landlock is not usable here (landlock_create_ruleset: error {})", -abi),
            });
        }
        Ok(Confinement::Landlock { abi, network: abi >= 4 })
    }

    /// How browsers are confined here, given what the kernel offers (`probe`): by Landlock
    /// where it is there; without it, not at all if the operator allowed that (and said so
    /// loudly), else not started: the error is the reason.
    pub fn decide(probe: Result<Confinement, String>, allow_unconfined: bool) -> Result<Confinement, String> {
        match probe {
            Ok(confinement) => {
                tracing::info!(confinement = %confinement.describe(), "browsers are confined by the kernel");
                Ok(confinement)
            }
            Err(reason) if allow_unconfined => {
                tracing::error!(
                    %reason,
                    "BROWSERS RUN UNCONFINED (allow_unconfined_browsers = true): any session can read \
                     and write what the broker can, its token secret and API keys included"
                );
                Ok(Confinement::Off { reason })
            }
            Err(reason) => {
                tracing::error!(
                    %reason,
                    "browsers cannot be confined, so none will start; allow_unconfined_browsers = true \
                     starts them anyway (every session could then read the broker's secrets)"
                );
                Err(reason)
            }
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Confinement::Landlock { .. })
    }

    /// Whether the kernel holds a browser whole, files, TCP connects, signals and abstract
    /// sockets (Landlock ABI 6 or later): all that holds a page that runs outside Chrome's
    /// sandbox, as a one-process shell's do (`single_process_shell`).
    pub fn holds_a_whole_browser(&self) -> bool {
        matches!(self, Confinement::Landlock { abi, network: true } if *abi >= 6)
    }

    /// One line for logs and `/ready`.
    pub fn describe(&self) -> String {
        match self {
            Confinement::Landlock { abi, network: true } => {
                format!("landlock (ABI {abi}): files and TCP connects confined")
            }
            Confinement::Landlock { abi, network: false } => {
                format!("landlock (ABI {abi}): files confined; TCP connects not (needs ABI 4)")
            }
            Confinement::Off { reason } => format!("off: {reason}"),
        }
    }
}

/// What one browser may touch.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Directories it may also read and execute from: the configured Chrome's own (an
    /// operator's Chrome for Testing under `/home`, say, with its libraries beside it).
    pub read_exec: Vec<PathBuf>,
    /// Directories it may only read (no execute): the extensions it loads.
    pub read_only: Vec<PathBuf>,
    /// Directories it may read and write (created beforehand; they must exist).
    pub read_write: Vec<PathBuf>,
    /// TCP ports it may connect to (on any address: Landlock knows ports only).
    pub connect_ports: Vec<u16>,
    /// Whether it may write files of `/proc`: Chrome's own sandbox writes its new user
    /// namespace's `uid_map`, `gid_map` and `setgroups`. Only for a browser that is not
    /// root (a root one runs without Chrome's sandbox, and could write `/proc/sys`).
    pub write_proc: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the browser's confinement: {0}")]
pub struct ConfineError(String);

/// A ruleset ready to be enforced in a child between fork and exec.
pub struct Prepared(OwnedFd);

/// Builds the ruleset for `allowed` (in the broker, before the fork).
pub fn prepare(allowed: &Allowed, network: bool) -> Result<Prepared, ConfineError> {
    let err = |e: &dyn std::fmt::Display| ConfineError(e.to_string());
    let all = AccessFs::from_all(TARGET_ABI);
    // A root browser could make a device node in its own directory and read the disk.
    let own = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let read = AccessFs::from_read(TARGET_ABI) | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(|e| err(&e))?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(|e| err(&e))?;
    if network {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp).map_err(|e| err(&e))?;
    }
    let mut created = ruleset.create().map_err(|e| err(&e))?;
    let trees = READ_TREES
        .iter()
        .map(Path::new)
        .chain(allowed.read_exec.iter().map(PathBuf::as_path));
    for path in trees.filter(|p| p.exists()) {
        created = created.add_rule(path_rule(path, read)?).map_err(|e| err(&e))?;
    }
    for dir in &allowed.read_only {
        let access = AccessFs::ReadFile | AccessFs::ReadDir;
        created = created.add_rule(path_rule(dir, access)?).map_err(|e| err(&e))?;
    }
    for path in WRITE_DEVICES.iter().map(Path::new).filter(|p| p.exists()) {
        let access = AccessFs::WriteFile | AccessFs::ReadFile;
        created = created.add_rule(path_rule(path, access)?).map_err(|e| err(&e))?;
    }
    if allowed.write_proc {
        created = created
            .add_rule(path_rule(Path::new("/proc"), AccessFs::WriteFile.into())?)
            .map_err(|e| err(&e))?;
    }
    for dir in &allowed.read_write {
        created = created.add_rule(path_rule(dir, own)?).map_err(|e| err(&e))?;
    }
    if network {
        for port in &allowed.connect_ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(|e| err(&e))?;
        }
    }
    let fd: Option<OwnedFd> = created.into();
    fd.map(Prepared)
        .ok_or_else(|| ConfineError("the kernel refused a Landlock ruleset".into()))
}

fn path_rule(path: &Path, access: BitFlags<AccessFs>) -> Result<PathBeneath<PathFd>, ConfineError> {
    let fd = PathFd::new(path).map_err(|e| ConfineError(format!("{}: {e}", path.display())))?;
    // A file gets only the rights a file can have.
    let access = if path.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET_ABI)
    };
    Ok(PathBeneath::new(fd, access))
}

/// The Landlock ABI of the running kernel: 1 or more, -1 without Landlock, or a negated
/// errno for another failure.
pub fn landlock_abi() -> i32 {
    sys::abi()
}

/// Makes `cmd`'s child enforce `prepared` (and `no_new_privs`) just before it runs Chrome.
pub fn enforce_in_child(cmd: &mut tokio::process::Command, prepared: Prepared) {
    let fd = prepared.0;
    sys::restrict_before_exec(cmd, fd);
}

/// The system calls of the child's side, and the ABI probe.
#[allow(unsafe_code)]
mod sys {
    use std::os::fd::{AsRawFd, OwnedFd};

    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

    pub(super) fn abi() -> i32 {
        // SAFETY: with a null attribute, zero size and the VERSION flag the call only
        // returns the ABI number; no memory is read or written.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if abi >= 0 {
            return abi as i32;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => -1,
            Some(errno) => -errno,
            None => -1,
        }
    }

    pub(super) fn restrict_before_exec(cmd: &mut tokio::process::Command, fd: OwnedFd) {
        // SAFETY: between fork and exec the closure makes two system calls (both
        // async-signal-safe), allocates nothing and touches no lock; `fd` stays open in the
        // parent while the command lives, and is close-on-exec, so Chrome never holds it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_landlock_with_network_and_scoping_holds_a_whole_browser() {
        let landlock = |abi| Confinement::Landlock { abi, network: abi >= 4 };
        assert!(landlock(6).holds_a_whole_browser());
        assert!(landlock(7).holds_a_whole_browser());
        assert!(!landlock(5).holds_a_whole_browser(), "no signal or socket scoping");
        assert!(!landlock(3).holds_a_whole_browser(), "no TCP confinement");
        let off = Confinement::Off {
            reason: "no Landlock".into(),
        };
        assert!(!off.holds_a_whole_browser());
    }

    #[test]
    fn the_probe_names_an_abi_or_a_reason() {
        match Confinement::probe() {
            Ok(Confinement::Landlock { abi, network }) => {
                assert!(abi >= 1);
                assert_eq!(network, abi >= 4);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn without_landlock_browsers_start_only_when_the_operator_says_so() {
        let missing = || Err("no Landlock".to_owned());
        assert_eq!(Confinement::decide(missing(), false), Err("no Landlock".to_owned()));
        assert_eq!(
            Confinement::decide(missing(), true),
            Ok(Confinement::Off {
                reason: "no Landlock".into()
            })
        );
        let landlock = Confinement::Landlock { abi: 7, network: true };
        assert_eq!(Confinement::decide(Ok(landlock.clone()), false), Ok(landlock.clone()));
        assert_eq!(Confinement::decide(Ok(landlock.clone()), true), Ok(landlock));
    }

    /// A confined child reads and writes its own directory, and neither reads nor writes
    /// a file beside it (the broker's secret), nor connects to a port it was not given.
    #[tokio::test]
    async fn a_confined_child_touches_only_what_it_is_allowed() {
        let Ok(Confinement::Landlock { network, .. }) = Confinement::probe() else {
            eprintln!("no Landlock on this kernel: nothing to check");
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("own");
        std::fs::create_dir(&own).unwrap();
        let secret = root.path().join("token_secret");
        std::fs::write(&secret, "s3cret-bytes").unwrap();
        // An extension's directory: read, never written.
        let ext = root.path().join("ext");
        std::fs::create_dir(&ext).unwrap();
        std::fs::write(ext.join("c.js"), "ext-bytes").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let forbidden_port = listener.local_addr().unwrap().port();
        let allowed = Allowed {
            read_exec: Vec::new(),
            read_only: vec![ext.clone()],
            read_write: vec![own.clone()],
            connect_ports: vec![1],
            write_proc: false,
        };
        let script = format!(
            "echo mine > {own}/f && cat {own}/f; cat {secret}; echo overwritten > {secret}; \
             cat {ext}/c.js; echo changed > {ext}/c.js; echo new > {ext}/new.js; \
             (exec 3<>/dev/tcp/127.0.0.1/{forbidden_port}) 2>/dev/null && echo connected; true",
            own = own.display(),
            secret = secret.display(),
            ext = ext.display()
        );
        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg("-c").arg(script).env_clear();
        enforce_in_child(&mut cmd, prepare(&allowed, network).unwrap());
        let out = cmd.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("mine"), "own directory readable and writable: {stdout}");
        assert!(!stdout.contains("s3cret"), "the secret was read: {stdout}");
        assert!(stdout.contains("ext-bytes"), "the extension was not readable: {stdout}");
        assert_eq!(std::fs::read_to_string(ext.join("c.js")).unwrap(), "ext-bytes");
        assert!(!ext.join("new.js").exists(), "a file was written into the extension");
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "s3cret-bytes",
            "the secret was overwritten"
        );
        if network {
            assert!(
                !stdout.contains("connected"),
                "connected to a port not allowed: {stdout}"
            );
        }
    }
}
