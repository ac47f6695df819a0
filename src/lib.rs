//! uplosi converts a raw OS disk image into each cloud's format and uploads, registers, replicates and publishes it.
//!
//! The pieces, in the order data flows through them:
//! - [`config`] reads `uplosi.conf` and `uplosi.conf.d/*.conf` into validated [`config::VariantConfig`]s;
//! - [`version`] owns image versions and the atomic version-file bump;
//! - [`image`] opens the source and maps where its data is; [`format`] turns that map into VHD, qcow2, tar.gz or
//!   raw streams without temporary copies; [`convert`] writes one to a file;
//! - [`measure`] precalculates the TPM PCR values of the image's UKI (`uplosi measurements`); [`boot`] boots the
//!   image under OVMF and a software TPM and checks them (`uplosi boot-check`);
//! - [`plan`] describes what an upload will do (the `--dry-run` output); [`lifecycle`] deletes and prunes old
//!   versions (`uplosi delete`, `uplosi prune`);
//! - [`cli`] defines the command line, and [`app`] runs it.

pub mod app;
pub mod atomic;
pub mod boot;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod convert;
pub mod format;
pub mod image;
pub mod lifecycle;
pub mod logging;
pub mod measure;
pub mod plan;
pub mod progress;
pub mod provider;
pub mod release;
pub mod report;
pub mod timeline;
pub mod transfer;
pub mod version;
