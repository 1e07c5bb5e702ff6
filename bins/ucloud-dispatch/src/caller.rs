//! Only the gateway's account may run the dispatcher: for anyone else the setuid
//! bit must buy nothing, not even a token check.

use crate::error::Error;
use nix::unistd::{getuid, User};
use ucloud_wire::config::SiteConfig;

pub fn check(site: &SiteConfig) -> Result<(), Error> {
    let name = &site.gateway_user;
    let gateway = User::from_name(name)
        .map_err(|e| Error::Config(format!("cannot look up gateway_user {name}: {e}")))?
        .ok_or_else(|| {
            Error::Config(format!(
                "gateway_user {name} (site.conf) is not an account on this system"
            ))
        })?;
    if gateway.uid.is_root() {
        return Err(Error::Config("gateway_user must not be root".into()));
    }
    // A gateway that died before we looked would leave us a child of init: the
    // plugin's parent-death signal would then be tied to init and never fire.
    if nix::unistd::getppid().as_raw() == 1 {
        return Err(Error::Usage(
            "the caller is gone (the parent is init): nothing to answer to".into(),
        ));
    }
    let uid = getuid();
    if uid != gateway.uid {
        return Err(Error::WrongCaller(format!(
            "only the gateway account {name} may run ucloud-dispatch; the caller's uid is {uid}"
        )));
    }
    Ok(())
}
