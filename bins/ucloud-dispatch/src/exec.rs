//! Opens the plugin for a call below the plugin directory (no symlinks, checked on
//! the open descriptor) and executes that very descriptor: no window between the
//! check and the exec. The request goes to the plugin as a sealed, read-only memfd
//! on fd 3, argv is fixed, and the environment is built from nothing.

use crate::drop;
use crate::error::Error;
use crate::mapping::Target;
use crate::sys;
use crate::trust::{self, Untrusted, Use};
use nix::fcntl::{fcntl, open, AtFlags, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
use nix::unistd::{alarm, chdir, execveat};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::install;
use ucloud_wire::paths;

/// The plugin's fd 3 (the request) and, for a `#!` script, fd 4 (the script itself,
/// which the kernel hands the interpreter as `/dev/fd/4`).
const REQUEST_FD: i32 = 3;
const SCRIPT_FD: i32 = 4;
const FIRST_FREE_FD: i32 = 10;

pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct Plugin {
    fd: OwnedFd,
    script: bool,
}

pub fn open_plugin(plugins: &OwnedFd, call: &str) -> Result<Plugin, Error> {
    // The call name was validated (letters and dots, no `..`, no `/`) by the
    // envelope decoder.
    let dir = paths::plugin_dir();
    let (fd, stat) = trust::open_at(plugins, &dir, call, Use::Read).map_err(|u| match u {
        Untrusted::Missing(_) => Error::unsupported_call(call),
        Untrusted::Symlink(path) => {
            Error::UnsafeInstallation(format!("{path} is a symlink: install the plugin as a file"))
        }
        u => u.into(),
    })?;
    install::check_plugin_mode(&format!("{dir}/{call}"), stat.st_mode)
        .map_err(Error::UnsafeInstallation)?;
    let fd = File::from(fd);
    let mut magic = [0u8; 2];
    let script = fd.read_at(&mut magic, 0).ok() == Some(2) && magic == *b"#!";
    Ok(Plugin {
        fd: fd.into(),
        script,
    })
}

/// The plugin's whole environment (contracts.md), nothing of the caller's.
pub fn environment(call: &str, target: &Target, site: &SiteConfig) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), target.home.to_string_lossy().into_owned()),
        ("USER".into(), target.name.clone()),
        ("LOGNAME".into(), target.name.clone()),
        ("SHELL".into(), "/bin/sh".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("UCLOUD_CALL".into(), call.into()),
        ("UCLOUD_PROVIDER".into(), site.provider.clone()),
        ("UCLOUD_PUBLIC_URL".into(), site.public_url.clone()),
        ("UCLOUD_IM_LIBEXEC".into(), paths::libexec_dir()),
        ("UCLOUD_IM_ETC".into(), paths::etc_dir()),
        ("UCLOUD_IM_DRIVES".into(), paths::drives_dir()),
        // ucloud-project's table of projects (groups, Slurm accounts, drives).
        ("UCLOUD_IM_PROJECTS".into(), paths::projects_dir()),
    ];
    if let Some(user) = &target.ucloud {
        env.push(("UCLOUD_USERNAME".into(), user.to_string()));
    }
    env
}

/// A request that passed every check, ready to run.
pub struct Prepared {
    pub call: String,
    pub request: Vec<u8>,
    pub target: Target,
    pub plugin: Plugin,
    pub env: Vec<(String, String)>,
    pub timeout: u64,
}

impl Prepared {
    /// Becomes the target account for good, hands over the request, enters the home
    /// directory, arms the time limit and executes the plugin. Returns only on failure.
    pub fn run(self, parent: nix::unistd::Pid) -> Error {
        let Err(e) = drop::become_target(&self.target, parent).and_then(|()| self.exec());
        e
    }

    fn exec(self) -> Result<std::convert::Infallible, Error> {
        let internal = |what: &str, e: &dyn std::fmt::Display| Error::Exec(format!("{what}: {e}"));
        // Everything held goes above the fixed numbers first, so that placing fds 3
        // and 4 never closes a descriptor something still owns. The directories the
        // trusted walks kept are closed: one of them may have taken fd 3 or 4.
        trust::forget_judged();
        let renumber =
            |fd| sys::renumber(fd, FIRST_FREE_FD).map_err(|e| internal("cannot renumber fds", &e));
        let plugin_fd = renumber(self.plugin.fd)?;
        let request_fd = renumber(sealed_request(&self.request)?)?;
        // Held until exec: dropping it would close fd 3.
        let _request = sys::place_fd(request_fd, REQUEST_FD)
            .map_err(|e| internal("cannot place the request on fd 3", &e))?;
        let exec_fd = if self.plugin.script {
            // A script is run by its interpreter, which reopens it through /dev/fd/4:
            // that fd must survive the exec (see ucloud-dispatch(8), "Script plugins").
            sys::place_fd(plugin_fd, SCRIPT_FD)
                .map_err(|e| internal("cannot place the script on fd 4", &e))?
        } else {
            plugin_fd
        };
        enter_home(&self.target)?;
        let argv = [cstring(&self.call)?, cstring("/dev/fd/3")?];
        let envp: Vec<CString> = (self.env.iter())
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        // Last, so that the whole limit belongs to the plugin.
        alarm::set(u32::try_from(self.timeout.max(1)).unwrap_or(u32::MAX));
        let e = execveat(&exec_fd, c"", &argv, &envp, AtFlags::AT_EMPTY_PATH).unwrap_err();
        Err(Error::Exec(format!(
            "cannot execute the plugin for {}: {e}",
            self.call
        )))
    }
}

/// The request in a memfd that nobody can change any more, reopened read-only.
fn sealed_request(request: &[u8]) -> Result<OwnedFd, Error> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| Error::Exec(format!("request memfd: {what}: {e}"));
    let memfd = memfd_create(
        c"ucloud-request",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| fail("create", &e))?;
    let mut file = File::from(memfd);
    file.write_all(request).map_err(|e| fail("write", &e))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| fail("seal", &e))?;
    let reopen = format!("/proc/self/fd/{}", file.as_raw_fd());
    // A fresh open file description: read-only, offset 0.
    open(
        reopen.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("reopen read-only", &e))
}

fn enter_home(target: &Target) -> Result<(), Error> {
    match chdir(&target.home) {
        Ok(()) => Ok(()),
        // The service account may have no home; its plugins run in /.
        Err(_) if target.ucloud.is_none() => Ok(()),
        Err(e) => Err(Error::Exec(format!(
            "cannot enter the home directory {} of {}: {e}",
            target.home.display(),
            target.name
        ))),
    }
}

fn cstring(text: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error::Internal(format!("{text:?} holds a NUL byte")))
}
