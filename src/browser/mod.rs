//! The browser layer: starting Chromium ([`launcher`]), the warm [`pool`] and the cap on
//! concurrent sessions, the broker's own small DevTools client ([`cdp`]), how a session's
//! browser is reached ([`upstream`]), where such connections may go ([`egress`]), each managed
//! browser's forward proxy ([`forward`]), a session's browser identity ([`identity`]),
//! how a browser passes for a person's ([`stealth`]) or for a chosen machine
//! ([`fingerprint`], [`devices`]), what its pages may not load ([`blocking`], with ad lists: [`ad_blocker`]) and the
//! challenges they show ([`challenges`]), the
//! cap on a session's tabs ([`tab_cap`]; a shared browser's context sessions' tabs and
//! downloads, on one connection: [`context_watch`]), the check of a user's own browser ([`byo`]),
//! what the kernel lets each browser touch ([`confine`]), what a client may send: the
//! context filter ([`filter`]) and the live view's ([`live_filter`]), a session's
//! screen now ([`screenshot`]), and a live browser's state as a fork takes it ([`snapshot`]).

pub(crate) mod ad_blocker;
pub(crate) mod blocking;
pub(crate) mod byo;
pub mod cdp;
pub(crate) mod challenges;
pub(crate) mod command;
pub mod confine;
pub(crate) mod context_watch;
pub(crate) mod devices;
pub(crate) mod egress;
pub(crate) mod file_policy;
pub mod filter;
pub(crate) mod fingerprint;
pub(crate) mod forward;
pub(crate) mod gateway_ports;
pub(crate) mod identity;
pub(crate) mod keeper;
pub(crate) mod launcher;
pub(crate) mod live_filter;
pub(crate) mod page_script;
pub(crate) mod pool;
pub(crate) mod scope;
pub(crate) mod screenshot;
pub(crate) mod shared;
pub(crate) mod snapshot;
pub(crate) mod spare_target;
pub(crate) mod stealth;
pub(crate) mod tab_cap;
pub(crate) mod upstream;
pub(crate) mod url_policy;
pub(crate) mod watch;

pub use launcher::{
    Browser, Chromes, LaunchError, Launcher, Screen, find_chrome, find_headless_shell, remove_dir_with_retries,
    running_as_root,
};
