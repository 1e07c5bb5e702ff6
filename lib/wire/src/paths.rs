//! Where ucloud-im keeps its files. Fixed at build time, never taken from argv or
//! the environment: a build for a real site leaves `UCLOUD_IM_ROOT` unset; the local
//! stack builds with it set to its throwaway root-owned prefix.

/// The prefix every path below starts with (empty on a real site).
pub const ROOT: &str = match option_env!("UCLOUD_IM_ROOT") {
    Some(root) => root,
    None => "",
};

fn under(path: &str) -> String {
    format!("{ROOT}{path}")
}

/// Root-owned configuration: `site.conf`, the UCloud public key, CA, refresh token.
pub fn etc_dir() -> String {
    under("/etc/ucloud-im")
}
pub fn site_config() -> String {
    under("/etc/ucloud-im/site.conf")
}
/// UCloud's public key for the provider: base64 of DER SubjectPublicKeyInfo, or PEM.
pub fn ucloud_public_key() -> String {
    under("/etc/ucloud-im/ucloud_key.pub")
}
/// The provider's refresh token, readable by the sender's account only.
pub fn refresh_token() -> String {
    under("/etc/ucloud-im/refresh-token")
}
/// State: mapping store, drive table, outbox.
pub fn state_dir() -> String {
    under("/var/lib/ucloud-im")
}
/// The root-only key the dispatcher signs and checks transfer tokens with.
pub fn transfer_key() -> String {
    under("/var/lib/ucloud-im/transfer.key")
}
/// One file per mapped UCloud user, named by [`crate::names::UcloudName::file_name`].
pub fn mappings_dir() -> String {
    under("/var/lib/ucloud-im/mappings")
}
/// One file per drive, named by its UCloud drive id.
pub fn drives_dir() -> String {
    under("/var/lib/ucloud-im/drives")
}
/// The durable spool of messages to UCloud.
pub fn outbox_dir() -> String {
    under("/var/lib/ucloud-im/outbox")
}
/// The singletons' leases (`lease`): one directory per role (`sender`,
/// `monitor`, `usage`), owned by the role's account, holding its token files.
pub fn leases_dir() -> String {
    under("/var/lib/ucloud-im/leases")
}
/// What UCloud tells the provider (its notification stream), written by the sender
/// as one file per event (root:<sender's own group> 2770) and acted on
/// by ucloud-project, which treats it as untrusted input.
pub fn inbox_dir() -> String {
    under("/var/lib/ucloud-im/inbox")
}
/// ucloud-project's state (root, 0755): `state.json` (root 0600, what it created)
/// and `table.json` (0644: each project's group, Slurm accounts and drive, read by
/// the plugins as the user).
pub fn projects_dir() -> String {
    under("/var/lib/ucloud-im/projects")
}
/// Which Slurm job was submitted for which UCloud job: written by the gateway,
/// read by the monitor (`binding`).
pub fn bindings_dir() -> String {
    under("/var/lib/ucloud-im/bindings")
}
/// Each sharer's own record of the shares they made (`shares.create` writes it
/// as the sharer; root 1733, sticky): ucloud-share grants only what a sharer's
/// own plugin recorded, whatever a forged answer from UCloud says.
pub fn share_consents_dir() -> String {
    under("/var/lib/ucloud-im/share-consents")
}
/// The terminal session identifiers used so far (root, 0700): one empty file per
/// identifier, made by the dispatcher before the shell starts, so that each
/// works once. Removed by the dispatcher when long expired.
pub fn sessions_used_dir() -> String {
    under("/var/lib/ucloud-im/sessions-used")
}
/// The registry's socket (`ucloud-registry serve`, socket-activated).
pub fn registry_socket() -> String {
    under("/run/ucloud-im/registry.sock")
}
pub fn audit_log() -> String {
    under("/var/log/ucloud-im/audit.log")
}
/// The dispatcher's count of audit records per refused caller (root, 0700): one
/// small file per real uid that was refused as a caller.
pub fn audit_limit_dir() -> String {
    under("/var/lib/ucloud-im/audit-limit")
}
/// Programs that are not on anyone's PATH: the dispatcher and the plugins.
pub fn libexec_dir() -> String {
    under("/usr/libexec/ucloud-im")
}
pub fn dispatcher() -> String {
    under("/usr/libexec/ucloud-im/ucloud-dispatch")
}
pub fn plugin_dir() -> String {
    under("/usr/libexec/ucloud-im/plugins")
}
/// The other programs (gateway, registry, sender, simulator).
pub fn bin_dir() -> String {
    under("/usr/bin")
}
