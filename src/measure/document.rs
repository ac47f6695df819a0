//! The documents verifiers read, written from one replayed boot ([`Measurements`](super::Measurements)):
//! - `uplosi`: the Go uplosi's document (`{"measurements": …, "EventLog": …}`) in any bank, plus
//!   `pcr11Phases`, PCR 11 after each phase path systemd-measure reports;
//! - `nitro`: exactly what AWS's `nitro-tpm-pcr-compute` prints (SHA-384 PCR 4, 7, 12);
//! - `aws-kms`: the `Condition` block of an AWS KMS key policy for an attestable AMI (NitroTPM PCR 4 and 12, or
//!   PCR 7 with Secure Boot);
//! - `rvps`: Trustee's reference value provider "sample" registration message, with each PCR under the names
//!   its TPM, Azure SEV-SNP vTPM and Azure TDX vTPM policies look up (`tpm_pcrN`, `snp_pcrN`, `tdx_pcrN`).

use std::collections::BTreeMap;

use base64::Engine;
use thiserror::Error;

use super::digest::{Bank, Digests};
use super::pcr::{REPORTED, Simulator, hex};
use super::phases;

/// A document format of `uplosi measurements --format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The Go uplosi's JSON (`measurements`, `EventLog`) and `pcr11Phases`.
    #[default]
    Uplosi,
    /// `nitro-tpm-pcr-compute`'s document: SHA-384 PCR 4, 7 and 12.
    Nitro,
    /// An AWS KMS key-policy `Condition` block on the NitroTPM's PCRs.
    AwsKms,
    /// Trustee's RVPS "sample" registration message (SHA-256).
    Rvps,
}

impl Format {
    /// The name as the command line and `measurementsFormat` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Uplosi => "uplosi",
            Format::Nitro => "nitro",
            Format::AwsKms => "aws-kms",
            Format::Rvps => "rvps",
        }
    }

    /// The format of a name, if there is one.
    pub fn from_name(name: &str) -> Option<Format> {
        [Format::Uplosi, Format::Nitro, Format::AwsKms, Format::Rvps].into_iter().find(|f| f.name() == name)
    }

    /// The bank the format is defined in (`None`: any, SHA-256 by default).
    pub fn fixed_bank(self) -> Option<Bank> {
        match self {
            Format::Uplosi => None,
            Format::Nitro | Format::AwsKms => Some(Bank::Sha384),
            Format::Rvps => Some(Bank::Sha256),
        }
    }

    /// The bank to write in: the one asked for, else the format's own.
    pub fn bank(self, asked: Option<Bank>) -> Result<Bank, DocumentError> {
        match (self.fixed_bank(), asked) {
            (Some(fixed), Some(asked)) if fixed != asked => {
                Err(DocumentError::Bank { format: self.name(), asked, needs: fixed })
            }
            (Some(fixed), _) => Ok(fixed),
            (None, asked) => Ok(asked.unwrap_or_default()),
        }
    }
}

/// Why a document cannot be written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DocumentError {
    /// The format is defined in another bank.
    #[error(
        "--format {format} with --bank {asked}: {format} is defined in {needs} (what the verifier reads); drop \
         --bank or pass --bank {needs}"
    )]
    Bank {
        /// The format.
        format: &'static str,
        /// The bank asked for.
        asked: Bank,
        /// The format's bank.
        needs: Bank,
    },
}

/// What a document is written from.
pub struct Source<'a> {
    /// The replayed boot.
    pub simulator: &'a Simulator,
    /// The bank.
    pub bank: Bank,
    /// `--phase` words: PCR 11 is taken after them.
    pub phases: &'a [String],
    /// Whether Secure Boot is on (keys given).
    pub secure_boot: bool,
}

impl Source<'_> {
    /// PCR `pcr` in the bank, PCR 11 after the phases.
    pub fn value(&self, pcr: u32) -> Vec<u8> {
        if pcr == 11 {
            let base = self.simulator.values.get(&11).copied().unwrap_or(Digests::ZERO);
            return phases::after(&base, self.phases).get(self.bank).to_vec();
        }
        self.simulator.value(pcr, self.bank)
    }

    /// `{"enter-initrd": HEX, "enter-initrd:leave-initrd": HEX, …}`: PCR 11 after each phase path.
    pub fn pcr11_phases(&self) -> BTreeMap<String, String> {
        let base = self.simulator.values.get(&11).copied().unwrap_or(Digests::ZERO);
        phases::paths(self.phases)
            .into_iter()
            .map(|path| (path.join(":"), hex(phases::after(&base, &path).get(self.bank))))
            .collect()
    }
}

/// Writes `format` from `source`, newline-terminated.
pub fn render(format: Format, source: &Source<'_>) -> String {
    match format {
        Format::Uplosi => uplosi(source),
        Format::Nitro => nitro(source),
        Format::AwsKms => aws_kms(source),
        Format::Rvps => rvps(source),
    }
}

fn uplosi(source: &Source<'_>) -> String {
    let mut simulator = source.simulator.clone();
    phases::extend(&mut simulator, source.phases);
    let table = serde_json::to_string(&source.pcr11_phases()).unwrap_or_else(|_| "{}".into());
    simulator.to_json(source.bank, &[("pcr11Phases", table)])
}

/// `nitro-tpm-pcr-compute`'s output: serde_json's pretty printer over `{"Measurements": {"HashAlgorithm",
/// "PCR4", "PCR7", "PCR12"}}`, keys in that order, and println!'s newline.
fn nitro(source: &Source<'_>) -> String {
    format!(
        "{{\n  \"Measurements\": {{\n    \"HashAlgorithm\": \"SHA384\",\n    \"PCR4\": \"{}\",\n    \"PCR7\": \"{}\",\n    \"PCR12\": \"{}\"\n  }}\n}}\n",
        hex(&source.value(4)),
        hex(&source.value(7)),
        hex(&source.value(12))
    )
}

/// The NitroTPM PCRs a KMS key policy checks: 4 and 12 for a standard boot, 7 with Secure Boot.
pub fn kms_pcrs(secure_boot: bool) -> &'static [u32] {
    if secure_boot { &[7] } else { &[4, 12] }
}

fn aws_kms(source: &Source<'_>) -> String {
    let conditions: serde_json::Map<String, serde_json::Value> = kms_pcrs(source.secure_boot)
        .iter()
        .map(|pcr| (format!("kms:RecipientAttestation:NitroTPMPCR{pcr}"), hex(&source.value(*pcr)).into()))
        .collect();
    let block = serde_json::json!({ "StringEqualsIgnoreCase": conditions });
    serde_json::to_string_pretty(&block).unwrap_or_default() + "\n"
}

/// The name prefixes Trustee's default policy looks PCRs up under: its TPM verifier, the Azure SEV-SNP vTPM and
/// the Azure TDX vTPM verifiers.
pub const RVPS_PREFIXES: [&str; 3] = ["tpm", "snp", "tdx"];

/// The RVPS payload: `{"tpm_pcr4": [HEX], …}` for every reported PCR.
pub fn rvps_payload(source: &Source<'_>) -> BTreeMap<String, Vec<String>> {
    let mut payload = BTreeMap::new();
    for pcr in REPORTED {
        let value = hex(&source.value(pcr));
        for prefix in RVPS_PREFIXES {
            payload.insert(format!("{prefix}_pcr{pcr}"), vec![value.clone()]);
        }
    }
    payload
}

fn rvps(source: &Source<'_>) -> String {
    let payload = serde_json::to_string(&rvps_payload(source)).unwrap_or_default();
    let message = serde_json::json!({
        "version": "0.1.0",
        "type": "sample",
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
    });
    serde_json::to_string_pretty(&message).unwrap_or_default() + "\n"
}

/// What a cloud's TPM reports for the image, for the release run's manifest: `{"bank", "pcrs": {"4": HEX, …}}`.
pub fn attestation(source: &Source<'_>, pcrs: &[u32]) -> serde_json::Value {
    let values: BTreeMap<String, String> = pcrs.iter().map(|p| (p.to_string(), hex(&source.value(*p)))).collect();
    serde_json::json!({ "bank": source.bank.name(), "pcrs": values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::secureboot;

    fn booted() -> Simulator {
        let mut sim = Simulator::default();
        secureboot::measure_policy(&mut sim, None);
        sim.extend_data(4, b"uki".to_vec(), "uki".into());
        sim.extend_data(11, b"section".to_vec(), "section".into());
        sim
    }

    #[test]
    fn each_format_has_its_bank_and_a_conflicting_one_is_refused() {
        assert_eq!(Format::Nitro.bank(None), Ok(Bank::Sha384));
        assert_eq!(
            Format::Nitro.bank(Some(Bank::Sha256)),
            Err(DocumentError::Bank { format: "nitro", asked: Bank::Sha256, needs: Bank::Sha384 })
        );
        assert_eq!(Format::Rvps.bank(Some(Bank::Sha256)), Ok(Bank::Sha256));
        assert_eq!(Format::Uplosi.bank(None), Ok(Bank::Sha256));
        assert_eq!(Format::Uplosi.bank(Some(Bank::Sha1)), Ok(Bank::Sha1));
        assert_eq!(Format::from_name("aws-kms"), Some(Format::AwsKms));
        assert_eq!(Format::from_name("json"), None);
    }

    #[test]
    fn nitro_is_nitro_tpm_pcr_computes_layout() {
        let sim = booted();
        let text =
            render(Format::Nitro, &Source { simulator: &sim, bank: Bank::Sha384, phases: &[], secure_boot: false });
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(parsed["Measurements"]["HashAlgorithm"], "SHA384");
        assert_eq!(parsed["Measurements"]["PCR4"], hex(&sim.value(4, Bank::Sha384)));
        assert_eq!(parsed["Measurements"]["PCR12"], "0".repeat(96));
        let keys: Vec<&str> = text.lines().filter_map(|l| l.trim().split('"').nth(1)).collect();
        assert_eq!(keys, ["Measurements", "HashAlgorithm", "PCR4", "PCR7", "PCR12"]);
        assert!(text.ends_with("}\n}\n"));
    }

    #[test]
    fn aws_kms_checks_pcr4_and_12_or_pcr7_with_secure_boot() {
        let sim = booted();
        let standard =
            render(Format::AwsKms, &Source { simulator: &sim, bank: Bank::Sha384, phases: &[], secure_boot: false });
        let parsed: serde_json::Value = serde_json::from_str(&standard).unwrap_or_default();
        let block = &parsed["StringEqualsIgnoreCase"];
        assert_eq!(block["kms:RecipientAttestation:NitroTPMPCR4"], hex(&sim.value(4, Bank::Sha384)));
        assert!(block["kms:RecipientAttestation:NitroTPMPCR12"].is_string());
        assert!(block.get("kms:RecipientAttestation:NitroTPMPCR7").is_none());
        let secure =
            render(Format::AwsKms, &Source { simulator: &sim, bank: Bank::Sha384, phases: &[], secure_boot: true });
        let parsed: serde_json::Value = serde_json::from_str(&secure).unwrap_or_default();
        assert_eq!(parsed["StringEqualsIgnoreCase"].as_object().map(|o| o.len()), Some(1));
        assert_eq!(
            parsed["StringEqualsIgnoreCase"]["kms:RecipientAttestation:NitroTPMPCR7"],
            hex(&sim.value(7, Bank::Sha384))
        );
    }

    #[test]
    fn rvps_carries_every_pcr_under_three_names_with_pcr11_after_the_phases() {
        let sim = booted();
        let phases = vec!["enter-initrd".to_string()];
        let text =
            render(Format::Rvps, &Source { simulator: &sim, bank: Bank::Sha256, phases: &phases, secure_boot: false });
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(parsed["version"], "0.1.0");
        assert_eq!(parsed["type"], "sample");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(parsed["payload"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        let pcr11 = Bank::Sha256.extend(&sim.value(11, Bank::Sha256), &Bank::Sha256.hash(b"enter-initrd"));
        for prefix in ["tpm", "snp", "tdx"] {
            assert_eq!(payload[format!("{prefix}_pcr11")], serde_json::json!([hex(&pcr11)]));
            assert_eq!(payload[format!("{prefix}_pcr4")], serde_json::json!([hex(&sim.value(4, Bank::Sha256))]));
        }
        assert_eq!(payload.as_object().map(|o| o.len()), Some(3 * REPORTED.len()));
    }

    #[test]
    fn the_uplosi_document_holds_pcr11_after_the_phases_and_the_phase_table() {
        let sim = booted();
        let phases = vec!["enter-initrd".to_string(), "leave-initrd".to_string()];
        let text = render(
            Format::Uplosi,
            &Source { simulator: &sim, bank: Bank::Sha256, phases: &phases, secure_boot: false },
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let table = &parsed["pcr11Phases"];
        assert_eq!(parsed["measurements"]["11"]["expected"], table["enter-initrd:leave-initrd"]);
        assert_eq!(table.as_object().map(|o| o.len()), Some(4), "the standard paths hold the one asked for");
        let events = parsed["EventLog"]["Events"].as_array().cloned().unwrap_or_default();
        assert!(events.iter().any(|e| e["Description"] == "EV_IPL: systemd-pcrphase leave-initrd"));
        assert!(parsed["measurements"]["7"]["expected"].is_string(), "PCR 7 joins the document");
    }
}
