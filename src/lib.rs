//! uplosi converts a raw OS disk image into each cloud's format and uploads, registers, replicates and publishes it.
//!
//! The pieces, in the order data flows through them:
//! - [`config`] reads `uplosi.conf` and `uplosi.conf.d/*.conf` into validated [`config::VariantConfig`]s;
//! - [`version`] owns image versions and the atomic version-file bump;
//! - [`plan`] describes what an upload will do (the `--dry-run` output);
//! - [`cli`] defines the command line, and [`app`] runs it.

pub mod app;
pub mod cli;
pub mod config;
pub mod plan;
pub mod version;
