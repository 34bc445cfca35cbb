//! A process's life beyond serving: the binary upgrade (SIGUSR2) and systemd's readiness
//! protocol. The drain and its delay are in [`crate::server`]; the checkpoints of quota and
//! SLA state in [`crate::monitor`]. docs/lifecycle.md says what each signal does.
//!
//! An upgrade, as the old process sees it ([`upgrade`]) and the new one ([`takeover`]),
//! over the wire of [`handoff`]:
//! 1. SIGUSR2: the old process holds changes (the control API answers 503, reloads wait)
//!    and starts its own executable again, with [`handoff::ENV`] set;
//! 2. the new process takes the listening sockets (SCM_RIGHTS), loads and validates its
//!    config, and asks for the state;
//! 3. the old process hands its state over (quota buckets, SLA windows, config version);
//!    the new one takes it in, starts accepting and says it serves;
//! 4. the old process stops accepting and drains; it writes no checkpoint after.
//!
//! Until 4 the old process serves as before; if the new one fails, exits or is not
//! serving within `limits.upgrade_timeout`, it is killed, the old one logs why and takes
//! changes again.

pub mod handoff;
pub mod notify;
pub mod takeover;
pub mod upgrade;
