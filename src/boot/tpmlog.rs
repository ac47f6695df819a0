//! The TPM's side of a boot, from swtpm's I/O log (`swtpm socket --log file=F,level=20`): every command the
//! guest sent and every response, as hex dumps. Replaying the successful TPM2_PCR_Extend (and TPM2_PCR_Event)
//! commands on one bank reproduces what the guest reads in `/sys/class/tpm/tpm0/pcr-BANK/N`.
//!
//! The log is parsed strictly: a line that is neither a record header nor hex bytes, a record whose bytes do not
//! add up to its length, or a command whose structure does not parse is an error, never a silent pass.

use thiserror::Error;

use crate::measure::digest::Bank;

/// TPM2_CC_PCR_Extend.
const CC_PCR_EXTEND: u32 = 0x182;
/// TPM2_CC_PCR_Event.
const CC_PCR_EVENT: u32 = 0x13c;
/// TPM2_CC_Startup.
const CC_STARTUP: u32 = 0x144;
/// swtpm's control command CMD_INIT: the TPM is (re)initialised, as at power-on.
const CTRL_INIT: u32 = 0x02;

/// Why the log cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TpmLogError {
    /// A line that is neither a record header nor hex bytes.
    #[error("line {line} of the swtpm log is not a record header or hex bytes: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A record with another number of bytes than its header says.
    #[error("the swtpm log record at line {line} says {expected} bytes but holds {actual}")]
    Length {
        /// 1-based line of the header.
        line: usize,
        /// The length in the header.
        expected: usize,
        /// The bytes that followed.
        actual: usize,
    },
    /// A command that does not parse.
    #[error("the TPM command at line {line} of the swtpm log is malformed: {reason}")]
    Command {
        /// 1-based line of the record.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No command at all: swtpm logged nothing, so the guest never talked to the TPM.
    #[error("the swtpm log holds no TPM command: the firmware never used the TPM")]
    Empty,
    /// Extends happened, none of them in the bank asked for: the TPM has it not allocated.
    #[error("the TPM received {count} PCR extends, none of them for the {bank} bank: it is not allocated")]
    BankMissing {
        /// The bank asked for.
        bank: Bank,
        /// The extends seen in other banks.
        count: usize,
    },
}

/// One extend of a PCR's bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend {
    /// The PCR.
    pub pcr: u32,
    /// The digest extended in the bank (for TPM2_PCR_Event: the bank's hash of the event data).
    pub digest: Vec<u8>,
}

#[derive(Debug)]
enum Kind {
    CtrlCmd,
    CtrlRsp,
    Cmd,
    Rsp,
}

struct Record {
    kind: Kind,
    line: usize,
    bytes: Vec<u8>,
}

fn parse_records(text: &str) -> Result<Vec<Record>, TpmLogError> {
    let mut records: Vec<(Record, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let header = [
            ("Ctrl Cmd: length ", Kind::CtrlCmd),
            ("Ctrl Rsp: length ", Kind::CtrlRsp),
            ("SWTPM_IO_Read: length ", Kind::Cmd),
            ("SWTPM_IO_Write: length ", Kind::Rsp),
        ]
        .into_iter()
        .find_map(|(prefix, kind)| Some((kind, line.strip_prefix(prefix)?.parse::<usize>().ok()?)));
        if let Some((kind, length)) = header {
            records.push((Record { kind, line: i + 1, bytes: Vec::with_capacity(length) }, length));
            continue;
        }
        let bytes: Option<Vec<u8>> =
            line.split(' ').map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2)).collect();
        match (bytes, records.last_mut()) {
            (Some(bytes), Some((record, _))) => record.bytes.extend(bytes),
            _ => return Err(TpmLogError::BadLine { line: i + 1, text: raw.to_string() }),
        }
    }
    records
        .into_iter()
        .map(|(record, length)| {
            if record.bytes.len() == length {
                Ok(record)
            } else {
                Err(TpmLogError::Length { line: record.line, expected: length, actual: record.bytes.len() })
            }
        })
        .collect()
}

/// A big-endian reader over a command's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("it ends at byte {} while {n} more were expected", self.bytes.len()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn digest_size(alg: u16) -> Option<usize> {
    match alg {
        0x0004 => Some(20),          // SHA1
        0x000b | 0x0012 => Some(32), // SHA256, SM3_256
        0x000c => Some(48),          // SHA384
        0x000d => Some(64),          // SHA512
        _ => None,
    }
}

/// What one command does to the bank.
enum Effect {
    Extend(Extend),
    /// An extend of other banks only.
    OtherBanks,
    ResetAll,
    Nothing,
}

fn command_effect(cmd: &[u8], bank: Bank) -> Result<Effect, String> {
    let mut r = Reader { bytes: cmd, at: 0 };
    let _tag = r.u16()?;
    let size = r.u32()? as usize;
    if size != cmd.len() {
        return Err(format!("its header says {size} bytes, the record holds {}", cmd.len()));
    }
    let code = r.u32()?;
    let sessions = |r: &mut Reader<'_>| -> Result<(), String> {
        let auth = r.u32()? as usize;
        r.take(auth).map(|_| ())
    };
    match code {
        CC_PCR_EXTEND => {
            let pcr = r.u32()?;
            sessions(&mut r)?;
            let count = r.u32()?;
            let mut found = None;
            for _ in 0..count {
                let alg = r.u16()?;
                let len = digest_size(alg).ok_or_else(|| format!("unknown hash algorithm {alg:#06x}"))?;
                let digest = r.take(len)?;
                if alg == bank.tpm_alg() {
                    found = Some(digest.to_vec());
                }
            }
            Ok(found.map_or(Effect::OtherBanks, |digest| Effect::Extend(Extend { pcr, digest })))
        }
        CC_PCR_EVENT => {
            let pcr = r.u32()?;
            sessions(&mut r)?;
            let len = r.u16()? as usize;
            let data = r.take(len)?;
            Ok(Effect::Extend(Extend { pcr, digest: bank.hash(data) }))
        }
        // TPM_SU_CLEAR: a successful Startup(CLEAR) starts from zeroed PCRs.
        CC_STARTUP if r.u16()? == 0 => Ok(Effect::ResetAll),
        _ => Ok(Effect::Nothing),
    }
}

/// The extends of `bank` the guest made, in order, since the TPM was last initialised (a power-on or a
/// successful Startup(CLEAR) starts the list again, as it zeroes the PCRs). TPM2_PCR_Reset is not replayed:
/// software can reset only PCR 16 and 23, which no model here looks at.
pub fn extends(log: &str, bank: Bank) -> Result<Vec<Extend>, TpmLogError> {
    let records = parse_records(log)?;
    if !records.iter().any(|r| matches!(r.kind, Kind::Cmd)) {
        return Err(TpmLogError::Empty);
    }
    let mut out = Vec::new();
    let mut other_banks = 0usize;
    let mut pending: Option<(usize, Effect)> = None;
    for record in records {
        match record.kind {
            Kind::CtrlCmd => {
                let code = record.bytes.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if code == Some(CTRL_INIT) {
                    out.clear();
                }
            }
            Kind::CtrlRsp => {}
            Kind::Cmd => {
                let effect = command_effect(&record.bytes, bank)
                    .map_err(|reason| TpmLogError::Command { line: record.line, reason })?;
                pending = Some((record.line, effect));
            }
            Kind::Rsp => {
                let Some((_, effect)) = pending.take() else { continue };
                let code = record.bytes.get(6..10).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if code != Some(0) {
                    continue;
                }
                match effect {
                    Effect::Extend(e) => out.push(e),
                    Effect::OtherBanks => other_banks += 1,
                    Effect::ResetAll => {
                        out.clear();
                        other_banks = 0;
                    }
                    Effect::Nothing => {}
                }
            }
        }
    }
    if out.is_empty() && other_banks > 0 {
        return Err(TpmLogError::BankMissing { bank, count: other_banks });
    }
    Ok(out)
}

/// The value of `pcr` in `bank` after the first `count` of its extends in `extends` (all of them when `count` is
/// `None`).
pub fn value(extends: &[Extend], bank: Bank, pcr: u32, count: Option<usize>) -> Vec<u8> {
    let ours = extends.iter().filter(|e| e.pcr == pcr).take(count.unwrap_or(usize::MAX));
    ours.fold(bank.zero(), |value, e| bank.extend(&value, &e.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(kind: &str, bytes: &[u8]) -> String {
        let mut out = format!(" {kind}: length {}\n", bytes.len());
        for chunk in bytes.chunks(16) {
            out.push(' ');
            for b in chunk {
                out.push_str(&format!("{b:02X} "));
            }
            out.push('\n');
        }
        out
    }

    fn extend_cmd(pcr: u32, sha256: [u8; 32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&pcr.to_be_bytes());
        let auth = [0x40, 0, 0, 9, 0, 0, 1, 0, 0]; // TPM_RS_PW, empty nonce, attributes, empty hmac
        body.extend_from_slice(&(auth.len() as u32).to_be_bytes());
        body.extend_from_slice(&auth);
        body.extend_from_slice(&2u32.to_be_bytes());
        body.extend_from_slice(&0x0004u16.to_be_bytes());
        body.extend_from_slice(&[7u8; 20]);
        body.extend_from_slice(&0x000bu16.to_be_bytes());
        body.extend_from_slice(&sha256);
        let mut cmd = vec![0x80, 0x02];
        cmd.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
        cmd.extend_from_slice(&CC_PCR_EXTEND.to_be_bytes());
        cmd.extend(body);
        cmd
    }

    const OK: [u8; 10] = [0x80, 0x01, 0, 0, 0, 0x0a, 0, 0, 0, 0];
    const FAIL: [u8; 10] = [0x80, 0x01, 0, 0, 0, 0x0a, 0, 0, 0x01, 0x01];

    #[test]
    fn successful_extends_replay_on_the_bank_asked_for() -> Result<(), TpmLogError> {
        let mut log = dump("Ctrl Cmd", &[0, 0, 0, 2, 0, 0, 0, 0]) + &dump("Ctrl Rsp", &[0, 0, 0, 0]);
        log += &(dump("SWTPM_IO_Read", &extend_cmd(4, [1; 32])) + &dump("SWTPM_IO_Write", &OK));
        log += &(dump("SWTPM_IO_Read", &extend_cmd(9, [2; 32])) + &dump("SWTPM_IO_Write", &FAIL));
        log += &(dump("SWTPM_IO_Read", &extend_cmd(4, [3; 32])) + &dump("SWTPM_IO_Write", &OK));
        let got = extends(&log, Bank::Sha256)?;
        assert_eq!(
            got,
            [Extend { pcr: 4, digest: vec![1; 32] }, Extend { pcr: 4, digest: vec![3; 32] }],
            "a failed extend does not count"
        );
        let mut expected = vec![0u8; 32];
        for d in [[1u8; 32], [3; 32]] {
            expected = Bank::Sha256.hash(&[expected, d.to_vec()].concat());
        }
        assert_eq!(value(&got, Bank::Sha256, 4, None), expected);
        assert_eq!(value(&got, Bank::Sha256, 9, None), vec![0; 32]);
        let sha1 = extends(&log, Bank::Sha1)?;
        assert_eq!(sha1.len(), 2, "the SHA-1 digests of the same commands");
        assert_eq!(sha1[0].digest, vec![7; 20]);
        assert_eq!(
            extends(&log, Bank::Sha384),
            Err(TpmLogError::BankMissing { bank: Bank::Sha384, count: 2 }),
            "a bank the TPM does not have is named"
        );
        // A second power-on starts over.
        let again = log.clone() + &dump("Ctrl Cmd", &[0, 0, 0, 2, 0, 0, 0, 0]);
        assert!(extends(&again, Bank::Sha256)?.is_empty());
        Ok(())
    }

    #[test]
    fn an_unreadable_log_is_an_error_not_a_pass() {
        assert_eq!(extends("", Bank::Sha256), Err(TpmLogError::Empty));
        assert!(matches!(
            extends(" SWTPM_IO_Read: length 10\n 80 01\n", Bank::Sha256),
            Err(TpmLogError::Length { .. })
        ));
        assert!(matches!(extends(" hello\n", Bank::Sha256), Err(TpmLogError::BadLine { line: 1, .. })));
        let mut short = extend_cmd(4, [1; 32]);
        short.truncate(20);
        short[2..6].copy_from_slice(&20u32.to_be_bytes());
        assert!(matches!(extends(&dump("SWTPM_IO_Read", &short), Bank::Sha256), Err(TpmLogError::Command { .. })));
    }
}
