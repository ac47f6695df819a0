//! The command line: `uplosi upload`, `uplosi convert`, `uplosi completions`, and the legacy bare form
//! `uplosi [-i] IMAGE`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::format::TargetFormat;
use crate::version::BumpPart;

const EXAMPLES: &str = "\
Examples:
  # Upload build/system.raw as configured in ./uplosi.conf and bump the patch version afterwards
  uplosi upload build/system.raw -i

  # The same, in the short form older scripts use
  uplosi -i build/system.raw

  # Check the configuration and see what would happen, without touching any cloud
  uplosi upload build/system.raw --dry-run

  # Only the AWS variants, configuration from another directory
  uplosi upload build/system.raw -c images/podvm --enable-variant-glob 'aws-*'

  # Export a qcow2 for libvirt
  uplosi convert build/system.raw --format qcow2 -o build/system.qcow2

  # The TPM PCR values the image's UKI produces, for its attestation policy
  uplosi measurements build/system.raw -o measurements.json

Exit codes: 0 success, 1 failure during the work, 2 bad usage or configuration (nothing was done),
130 interrupted (what the run created was removed).";

/// Convert raw OS disk images and upload them to AWS, Azure, GCP and OpenStack.
///
/// uplosi reads uplosi.conf and uplosi.conf.d/*.conf (the same files the Go uplosi reads), converts the image to
/// each enabled variant's format, uploads it, registers it under the configured version, replicates and publishes
/// it, and prints one reference per line on stdout.
#[derive(Debug, Parser)]
#[command(name = "uplosi", version, after_help = EXAMPLES, arg_required_else_help = true)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert, upload, register, replicate and publish IMAGE for every enabled variant.
    ///
    /// References (AMI ARNs, gallery image version IDs, GCE image paths, Glance image IDs, exported file paths) are
    /// printed on stdout, one per line; logs and progress go to stderr.
    #[command(after_help = EXAMPLES)]
    Upload(UploadArgs),
    /// Convert IMAGE to another disk format, streaming and sparse-aware.
    Convert(ConvertArgs),
    /// Precalculate the TPM PCR values (4, 7, 8, 9, 11, 12, 13, 15) of booting IMAGE's unified kernel image.
    ///
    /// The ESP of IMAGE (raw or qcow2) is read directly: no mount, no root, no systemd-dissect. The boot path is the
    /// firmware's: EFI/BOOT/BOOTX64.EFI is the UKI itself, or systemd-boot starting the entry it picks by itself
    /// from EFI/Linux/ (mkosi's default layout). The document (-F: the Go uplosi's JSON, nitro-tpm-pcr-compute's,
    /// an AWS KMS key-policy condition or Trustee's RVPS message) goes to -o FILE (written atomically) or to stdout;
    /// a summary of the boot stages, the LOAD_FILE2 measurements and the UKI sections goes to stderr.
    #[command(
        alias = "precalculate-measurements",
        after_help = "Examples:\n  uplosi measurements build/system.raw -o measurements.json\n  uplosi measurements build/system.raw --bank sha384 --phase enter-initrd:leave-initrd:sysinit:ready\n  uplosi measurements build/system.raw --format nitro --pk PK.esl --kek KEK.esl --db db.esl\n  uplosi measurements build/system.raw --format rvps --phase enter-initrd:leave-initrd > rvps.json"
    )]
    Measurements(MeasurementsArgs),
    /// Boot IMAGE in a throw-away VM and check that it comes up with the PCR values `uplosi measurements` predicts.
    ///
    /// The VM: QEMU (q35), OVMF from Debian's ovmf package with a fresh variable store, Secure Boot off, a TPM 2.0
    /// from `swtpm socket --tpm2` with a fresh state, IMAGE (raw or qcow2) as the only disk with writes going to a
    /// temporary overlay (IMAGE is not changed), no network device, the serial console on a pipe. KVM where it
    /// works, TCG otherwise (also when /dev/kvm opens but KVM fails, as on nested hosts). Every PCR 4, 9, 11, 12
    /// and 13 extend the firmware, systemd-stub and the kernel make before user space starts is compared, event by
    /// event, with the predicted event log (read from swtpm's log of every TPM command); later extends are listed.
    ///
    /// Exit codes: 0 the system came up with the predicted measurements; 1 the boot or a measurement failed (what
    /// was expected, what happened, the last 20 console lines); 2 bad input (no ESP or UKI, not x86_64, qemu, OVMF
    /// or swtpm missing); 130 interrupted (the VM and the TPM are stopped, their files removed).
    #[command(
        after_help = "Examples:\n  uplosi boot-check build/system.raw\n  uplosi boot-check build/system.qcow2 --timeout 10m --serial-log console.log --output json"
    )]
    BootCheck(BootCheckArgs),
    /// Delete every image of VERSION that the selected variants uploaded, in all their regions, with what stands
    /// behind it (snapshots, leftover upload disks and objects).
    ///
    /// The images are found by rendering each variant's name template (amiName, imageName, path, the gallery image
    /// definition's versions) with the version left open; names without a MAJOR.MINOR.PATCH there are never
    /// touched. The plan is printed first. Never deleted: a protected Glance image, an AMI the variant's
    /// ssmParameter points to, the version the version file (or imageVersion) holds. Without --dry-run or --yes,
    /// uplosi asks once on a terminal and refuses (exit 2) elsewhere.
    #[command(
        after_help = "Examples:\n  uplosi delete 1.2.3 --dry-run\n  uplosi delete 1.2.3 --yes --enable-variant-glob 'aws-*' --output json"
    )]
    Delete(DeleteArgs),
    /// Delete all but the newest versions of every selected variant's images.
    ///
    /// Per variant it keeps the --keep N newest versions (semver order), the version the version file (or
    /// imageVersion) holds and anything newer, and with --older-than anything created more recently than that (the
    /// cloud's own creation time; a file's modification time); it deletes the rest, as `uplosi delete` does.
    #[command(
        after_help = "Examples:\n  uplosi prune --keep 3 --dry-run\n  uplosi prune --keep 3 --older-than 30d --yes"
    )]
    Prune(PruneArgs),
    /// Print a shell completion script.
    ///
    /// For example: `uplosi completions bash > /etc/bash_completion.d/uplosi`.
    Completions {
        /// The shell to generate completions for.
        shell: clap_complete::Shell,
    },
}

/// Output format of `upload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One reference per line (the Go tool's output).
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Where the configuration is and which of its variants a command works on (`upload`, `delete`, `prune`).
#[derive(Debug, Args)]
pub struct VariantSelection {
    /// Directory that holds uplosi.conf and uplosi.conf.d/; relative version files and paths resolve against it.
    #[arg(short = 'c', long = "config", value_name = "DIR", default_value = ".")]
    pub config_dir: PathBuf,

    /// Only variants whose name matches one of these globs (repeat or separate with commas). Default: all.
    #[arg(long = "enable-variant-glob", value_name = "GLOB", value_delimiter = ',')]
    pub enable_variant_glob: Vec<String>,

    /// Skip variants whose name matches one of these globs (repeat or separate with commas).
    #[arg(long = "disable-variant-glob", value_name = "GLOB", value_delimiter = ',')]
    pub disable_variant_glob: Vec<String>,
}

/// Arguments of `uplosi upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The disk image, e.g. build/system.raw: raw (a regular file or a block device) or qcow2.
    pub image: PathBuf,

    /// After every variant succeeded, increment the version in each version file used (imageVersionFile).
    #[arg(short = 'i', long)]
    pub increment_version: bool,

    /// Which part of the version -i increments.
    #[arg(long, value_enum, default_value_t = BumpPart::Patch, requires = "increment_version")]
    pub bump: BumpPart,

    #[command(flatten)]
    pub selection: VariantSelection,

    /// Validate everything and print the plan per variant; touch no network and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Boot the image under OVMF and a software TPM (`uplosi boot-check`) after the checks and before the first byte
    /// moves; if it does not come up with the predicted PCR measurements, nothing is uploaded (exit 1). The same as
    /// `bootCheck = true`; `bootCheckExpect` and `bootCheckTimeout` apply.
    #[arg(long)]
    pub boot_check: bool,

    /// Format of stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Parallel block uploads per variant (EBS blocks are 512 KiB each; Azure Put Page requests carry up to 4 MiB,
    /// so at most 16 of them are in flight).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Variants uploading at the same time. Default: all of them.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Stop the other variants (they remove what they created) as soon as one fails. Default: the others finish.
    #[arg(long)]
    pub fail_fast: bool,

    /// Also write the run's JSON manifest (what `--output json` prints: references, version, per-variant status,
    /// regions and errors) to FILE, atomically, even when variants fail.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Re-run only the variants that failed or were skipped in MANIFEST (written by --manifest), for the same
    /// version; the new manifest keeps the earlier successes.
    #[arg(long, value_name = "MANIFEST")]
    pub retry_failed: Option<PathBuf>,
}

/// Arguments of `uplosi convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The disk image to convert: raw or qcow2.
    pub image: PathBuf,

    /// The format to write.
    #[arg(short, long, value_enum)]
    pub format: TargetFormat,

    /// Where to write the result; written under a temporary name and renamed when complete.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,

    /// gzip level for tar.gz (1 fastest … 9 smallest).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub level: u32,
}

/// The Secure Boot keys of the firmware that boots the image: with them Secure Boot is on.
#[derive(Debug, Default, Args)]
pub struct SecureBootArgs {
    /// The platform key: an EFI signature list (as `cert-to-efi-sig-list` writes it). Turns Secure Boot on: PCR 7
    /// then holds the keys and the db entry that verified each image, and an image no db certificate signed is
    /// refused (exit 2), as the firmware would refuse to start it.
    #[arg(long = "pk", value_name = "FILE", help_heading = "Secure Boot")]
    pub pk: Option<PathBuf>,

    /// The key exchange keys (an EFI signature list).
    #[arg(long = "kek", value_name = "FILE", help_heading = "Secure Boot")]
    pub kek: Option<PathBuf>,

    /// The signature database db (an EFI signature list); required with --pk.
    #[arg(long = "db", value_name = "FILE", help_heading = "Secure Boot")]
    pub db: Option<PathBuf>,

    /// The forbidden signature database dbx (an EFI signature list).
    #[arg(long = "dbx", value_name = "FILE", help_heading = "Secure Boot")]
    pub dbx: Option<PathBuf>,
}

impl SecureBootArgs {
    /// The key files.
    pub fn files(&self) -> crate::measure::KeyFiles {
        crate::measure::KeyFiles {
            pk: self.pk.clone(),
            kek: self.kek.clone(),
            db: self.db.clone(),
            dbx: self.dbx.clone(),
        }
    }
}

/// Arguments of `uplosi measurements`.
#[derive(Debug, Args)]
pub struct MeasurementsArgs {
    /// The disk image (raw or qcow2) with a GPT and an EFI system partition.
    pub image: PathBuf,

    /// Write the document here (atomically) instead of to stdout.
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,

    /// Path of the UKI in the image, picked by hand instead of the one the firmware's boot path reaches
    /// (EFI/BOOT/BOOTX64.EFI, or what systemd-boot there boots). Either as the image mounts the ESP (`/boot/…` or
    /// `/efi/…`: that first directory is the ESP's mount point) or relative to the ESP's root
    /// (`EFI/Linux/podvm.efi`). Looked up case-insensitively, as FAT does.
    #[arg(short = 'u', long = "uki-path", value_name = "UKI_PATH")]
    pub uki_path: Option<String>,

    /// The PCR bank to compute: sha1, sha256, sha384 (AWS NitroTPM attests with SHA-384). Default: sha256, or
    /// the bank the --format is defined in.
    #[arg(long, value_enum, value_name = "BANK")]
    pub bank: Option<crate::measure::digest::Bank>,

    /// The document: `uplosi` (the Go uplosi's JSON with the event log and pcr11Phases), `nitro` (exactly
    /// nitro-tpm-pcr-compute's SHA-384 PCR 4/7/12), `aws-kms` (a KMS key-policy Condition on NitroTPMPCR4 and 12,
    /// or 7 with Secure Boot), `rvps` (Trustee's RVPS "sample" message: tpm_pcrN, snp_pcrN, tdx_pcrN, SHA-256).
    #[arg(short = 'F', long, value_enum, default_value_t = crate::measure::document::Format::Uplosi)]
    pub format: crate::measure::document::Format,

    /// Boot phases systemd-pcrphase extends PCR 11 with, colon-separated as `systemd-measure calculate --phase=`
    /// takes them (e.g. enter-initrd:leave-initrd:sysinit:ready): PCR 11 is reported after them.
    #[arg(long, value_name = "WORDS")]
    pub phase: Option<String>,

    #[command(flatten)]
    pub secure_boot: SecureBootArgs,
}

/// Arguments of `uplosi boot-check`.
#[derive(Debug, Args)]
pub struct BootCheckArgs {
    /// The disk image (raw or qcow2) with a GPT and an EFI system partition holding a UKI.
    pub image: PathBuf,

    /// Path of the UKI in the image, picked by hand, as for `uplosi measurements`.
    #[arg(short = 'u', long = "uki-path", value_name = "UKI_PATH")]
    pub uki_path: Option<String>,

    /// The PCR bank to compare: sha1, sha256 or sha384. swtpm gets that bank allocated too.
    #[arg(long, value_enum, value_name = "BANK", default_value_t = crate::measure::digest::Bank::Sha256)]
    pub bank: crate::measure::digest::Bank,

    #[command(flatten)]
    pub secure_boot: SecureBootArgs,

    /// Firmware code and variable store template to boot with (default: Debian's
    /// /usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd).
    #[arg(long, value_name = "CODE[:VARS]")]
    pub firmware: Option<String>,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(128..=1048576))]
    pub memory: u32,

    /// Virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub cpus: u32,

    /// A regular expression the serial console must show for the system to count as up. Default: a login prompt
    /// or systemd reaching multi-user.target or graphical.target.
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,

    /// How long to wait for it, as a Go duration (`90s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: String,

    /// Only boot; do not compare the measurements.
    #[arg(long)]
    pub no_measure: bool,

    /// Keep the serial console output in FILE.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,

    /// Force KVM or TCG. Default: KVM where /dev/kvm works, TCG otherwise (and when KVM fails to run the guest).
    #[arg(long, value_enum)]
    pub accel: Option<crate::boot::vm::Accel>,

    /// Format of stdout: nothing (text; the summary goes to stderr) or the JSON report.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// What `delete` and `prune` share.
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    #[command(flatten)]
    pub selection: VariantSelection,

    /// Print the plan only: list and describe calls, nothing deleted.
    #[arg(long)]
    pub dry_run: bool,

    /// Delete without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Format of stdout: the plan (text) or `{"variants": [{"variant", "provider", "deleted", "kept", "failed"}]}`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Variants worked on at the same time. Default: all.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
}

/// Arguments of `uplosi delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The version to delete (MAJOR.MINOR.PATCH).
    pub version: String,

    #[command(flatten)]
    pub common: LifecycleArgs,
}

/// Arguments of `uplosi prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// How many of the newest versions to keep.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Also keep what was created more recently than this: a Go duration (`720h`) or days (`30d`).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,

    #[command(flatten)]
    pub common: LifecycleArgs,
}

const SUBCOMMANDS: &[&str] = &[
    "upload",
    "convert",
    "measurements",
    "precalculate-measurements",
    "boot-check",
    "delete",
    "prune",
    "completions",
    "help",
];
const ROOT_FLAGS: &[&str] = &["-h", "--help", "-V", "--version"];

/// Rewrites the legacy form `uplosi [-i] IMAGE` to `uplosi upload [-i] IMAGE`.
///
/// The seed's scripts call `uplosi -i build/system.raw`; the Go tool dropped that form. Anything whose first word
/// is not a subcommand or a root flag is treated as upload arguments.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let is_global_flag =
        |a: &OsString| matches!(a.to_str(), Some("-v" | "-vv" | "-vvv" | "--verbose" | "-q" | "--quiet"));
    let first_word = args.iter().enumerate().skip(1).find(|(_, a)| !is_global_flag(a));
    if let Some((index, first)) = first_word {
        let first = first.to_string_lossy();
        if !SUBCOMMANDS.contains(&first.as_ref()) && !ROOT_FLAGS.contains(&first.as_ref()) {
            args.insert(index, OsString::from("upload"));
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(OsString::from)).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn legacy_forms_become_upload() {
        assert_eq!(norm(&["uplosi", "-i", "img"]), ["uplosi", "upload", "-i", "img"]);
        assert_eq!(norm(&["uplosi", "img"]), ["uplosi", "upload", "img"]);
        assert_eq!(norm(&["uplosi", "-v", "img"]), ["uplosi", "-v", "upload", "img"]);
        assert_eq!(norm(&["uplosi", "-c", "d", "img"]), ["uplosi", "upload", "-c", "d", "img"]);
    }

    #[test]
    fn subcommands_and_root_flags_are_untouched() {
        assert_eq!(norm(&["uplosi", "upload", "img"]), ["uplosi", "upload", "img"]);
        assert_eq!(norm(&["uplosi", "convert", "a"]), ["uplosi", "convert", "a"]);
        assert_eq!(norm(&["uplosi", "--version"]), ["uplosi", "--version"]);
        assert_eq!(norm(&["uplosi"]), ["uplosi"]);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
