//! A TPM PCR simulator (every bank at once) with its event log, the JSON document the Go tool writes, and the
//! boot steps that extend PCRs 4, 9 and 11 when a UKI boots (TCG PC Client Platform Firmware Profile,
//! systemd-stub, the Linux EFI stub's LOAD_FILE2 initrd protocol).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;

use super::digest::{Bank, Digests};
use super::pe::Section;

/// The PCRs reported: the Go tool's, and PCR 7 (Secure Boot policy), which the clouds attest with; those no boot
/// step extends stay zero, as the Go tool expects.
pub const REPORTED: [u32; 8] = [4, 7, 8, 9, 11, 12, 13, 15];

/// SHA-256 of the EV_EFI_ACTION string "Calling EFI Application from Boot Option".
const EV_EFI_ACTION: &[u8] = b"Calling EFI Application from Boot Option";
/// The EV_SEPARATOR event data: four zero bytes.
const EV_SEPARATOR: [u8; 4] = [0; 4];

/// One extend operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The PCR.
    pub pcr: u32,
    /// The digest extended, in each bank.
    pub digest: Digests,
    /// The event data, where the digest is the hash of it.
    pub data: Option<Vec<u8>>,
    /// What it is.
    pub description: String,
}

/// The PCRs (every bank) and the events that produced them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Simulator {
    /// PCR index to its value in each bank.
    pub values: BTreeMap<u32, Digests>,
    /// Every extend, in order.
    pub events: Vec<Event>,
    /// PCRs whose value depends on the machine that boots the image (written with `"warnOnly": true`).
    pub machine_dependent: BTreeSet<u32>,
}

impl Default for Simulator {
    fn default() -> Self {
        Self {
            values: REPORTED.iter().map(|&i| (i, Digests::ZERO)).collect(),
            events: Vec::new(),
            machine_dependent: BTreeSet::new(),
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Simulator {
    /// PCR\[pcr\] = H(PCR\[pcr\] || digest) in every bank, and the event is logged.
    pub fn extend(&mut self, pcr: u32, digest: Digests, data: Option<Vec<u8>>, description: String) {
        self.values.entry(pcr).or_insert(Digests::ZERO).extend(&digest);
        self.events.push(Event { pcr, digest, data, description });
    }

    /// The value of `pcr` in `bank` (zero when nothing extended it).
    pub fn value(&self, pcr: u32, bank: Bank) -> Vec<u8> {
        self.values.get(&pcr).map_or_else(|| bank.zero(), |v| v.get(bank).to_vec())
    }

    /// PCR 4: the firmware's boot-option action and separator, then the Authenticode hash of each PE image it
    /// loads: the UKI, then the kernel that systemd-stub hands to LoadImage.
    pub fn boot_stages(&mut self, stages: &[(&str, Digests)]) {
        self.extend(
            4,
            Digests::of(EV_EFI_ACTION),
            None,
            "EV_EFI_ACTION: Calling EFI Application from Boot Option".into(),
        );
        self.extend(4, Digests::of(&EV_SEPARATOR), Some(EV_SEPARATOR.to_vec()), "EV_SEPARATOR".into());
        for (i, (name, digest)) in stages.iter().enumerate() {
            self.extend(4, *digest, None, format!("Boot Stage {}: {name}", i + 1));
        }
    }

    /// Extends `pcr` with the hash of `data` (in each bank), keeping the data in the log.
    pub fn extend_data(&mut self, pcr: u32, data: Vec<u8>, description: String) {
        self.extend(pcr, Digests::of(&data), Some(data), description);
    }

    /// PCR 9: the command line the kernel got, as UTF-16LE with its NUL, then the digest of the initrd it loaded
    /// (LOAD_FILE2), if there is one.
    pub fn linux_load2(&mut self, cmdline: &str, initrd_digest: Option<Digests>) {
        let mut bytes = cmdline.as_bytes().to_vec();
        bytes.push(0);
        let utf16: Vec<u8> = cmdline.encode_utf16().chain(std::iter::once(0)).flat_map(u16::to_le_bytes).collect();
        let description = format!("EV_EVENT_TAG: Linux LOAD_FILE2 protocol: cmdline {}", go_quote(&bytes));
        self.extend_data(9, utf16, description);
        if let Some(digest) = initrd_digest {
            let description =
                format!("EV_EVENT_TAG: Linux LOAD_FILE2 protocol: initrd (digest {})", hex(&digest.sha256));
            self.extend(9, digest, None, description);
        }
    }

    /// PCR 11: for each section the stub measures, in its order, the NUL-terminated name, then the content.
    pub fn uki_sections_measured(&mut self, measured: &[Section]) {
        for (i, section) in measured.iter().enumerate() {
            let name = nul_terminated(&section.name);
            self.extend(
                11,
                Digests::of(&name),
                Some(name),
                format!("EV_IPL: UKI section {} name: {}", i + 1, section.name),
            );
            self.extend(
                11,
                section.digest,
                None,
                format!("EV_IPL: UKI section {} data: {}", i + 1, hex(&section.digest.sha256)),
            );
        }
    }

    /// The Go tool's JSON in `bank`: `{"measurements":{"4":{"expected":HEX},…},"EventLog":{"Events":[…]}}`,
    /// compact, keys of `measurements` in Go's string order, HTML characters escaped as Go's encoder does,
    /// newline-terminated. `extra` members (key, JSON value) follow `EventLog`.
    pub fn to_json(&self, bank: Bank, extra: &[(&str, String)]) -> String {
        // Written by hand: the key order must be Go's (struct fields in order, map keys sorted as strings), which
        // serde_json's map does not keep.
        let string = |s: &str| serde_json::Value::from(s).to_string();
        let mut values: Vec<(String, &[u8])> = self.values.iter().map(|(i, v)| (i.to_string(), v.get(bank))).collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        let measurements: Vec<String> = values
            .iter()
            .map(|(k, v)| {
                // Constellation's measurement format marks values an attestation should only warn about.
                let warn = if k.parse().is_ok_and(|i: u32| self.machine_dependent.contains(&i)) {
                    ",\"warnOnly\":true"
                } else {
                    ""
                };
                format!("{}:{{\"expected\":{}{warn}}}", string(k), string(&hex(v)))
            })
            .collect();
        let events: Vec<String> = self
            .events
            .iter()
            .map(|e| {
                let data = match e.data.as_ref().filter(|d| !d.is_empty()) {
                    Some(d) => format!(",\"Data\":{}", string(&base64::engine::general_purpose::STANDARD.encode(d))),
                    None => String::new(),
                };
                format!(
                    "{{\"PCRIndex\":{},\"Digest\":{}{data},\"Description\":{}}}",
                    e.pcr,
                    string(&hex(e.digest.get(bank))),
                    string(&e.description)
                )
            })
            .collect();
        let extra: String = extra.iter().map(|(key, value)| format!(",{}:{value}", string(key))).collect();
        let json = format!(
            "{{\"measurements\":{{{}}},\"EventLog\":{{\"Events\":[{}]}}{extra}}}\n",
            measurements.join(","),
            events.join(",")
        );
        // Go's encoder escapes these HTML characters inside strings; they cannot occur outside one here.
        json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
    }
}

/// Whether the stub measuring `measured` extends PCR 11 with the section (empty ones it skips).
pub fn is_measured(section: &Section, measured: &[&str]) -> bool {
    measured.contains(&section.name.as_str()) && section.size > 0
}

/// Orders sections as the Go tool lists them: measured ones in the stub's order, then the rest by name.
pub fn order_sections(mut sections: Vec<Section>, measured: &[&str]) -> Vec<Section> {
    let rank = |s: &Section| {
        let is = is_measured(s, measured);
        let order = measured.iter().position(|n| *n == s.name).map_or(-1, |p| p as i64);
        (!is, order, s.name.clone())
    };
    sections.sort_by_key(rank);
    sections
}

fn nul_terminated(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    if bytes.last() != Some(&0) {
        bytes.push(0);
    }
    bytes
}

/// Go's `%q` of a byte string: printable characters as they are, the usual escapes, `\xNN` for other bytes.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }

    fn sha256_value(sim: &Simulator, pcr: u32) -> String {
        hex(&sim.value(pcr, Bank::Sha256))
    }

    // The vectors below are the Go tool's own (measured-boot/measure/pcr04_test.go, pcr09_test.go,
    // pcr11_test.go).

    #[test]
    fn pcr4_matches_the_go_test_vector() {
        let mut sim = Simulator::default();
        sim.boot_stages(&[("stage0", Digests::filled(0)), ("stage1", Digests::filled(1))]);
        assert_eq!(sha256_value(&sim, 4), "22116dee861aa6b44242ac469eab24cead344d52c77131f54ac1cac9d6a2408e");
        assert_eq!(
            sim.events[0].digest.sha256,
            from_hex("3d6772b4f84ed47595d72a2c4c5ffd15f5bb72c7507fe26f2aaee2c69d5633ba")
        );
        assert_eq!(
            sim.events[1].digest.sha256,
            from_hex("df3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119")
        );
    }

    #[test]
    fn pcr9_matches_the_go_test_vector() {
        let mut sim = Simulator::default();
        sim.linux_load2("console=tty0", Some(Digests::filled(0)));
        assert_eq!(sha256_value(&sim, 9), "eb4f7bca865807d3163b95174d6e66cfc74acf8b930a553e95ec94662cb6facd");
        assert_eq!(sim.events[0].description, "EV_EVENT_TAG: Linux LOAD_FILE2 protocol: cmdline \"console=tty0\\x00\"");
        let mut no_initrd = Simulator::default();
        no_initrd.linux_load2("console=tty0", None);
        assert_eq!(no_initrd.events.len(), 1, "no initrd, no initrd event");
    }

    #[test]
    fn pcr11_matches_the_go_test_vector() {
        let sections = vec![
            Section { name: ".text".into(), size: 100, digest: Digests::filled(0) },
            Section { name: ".linux".into(), size: 100, digest: Digests::filled(0) },
            Section { name: ".initrd".into(), size: 5, digest: Digests::filled(1) },
        ];
        let measured = super::super::stub::StubModel::for_release(None).pcr11_sections();
        let ordered = order_sections(sections, measured);
        assert_eq!(ordered.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [".linux", ".initrd", ".text"]);
        let mut sim = Simulator::default();
        sim.uki_sections_measured(&ordered[..2]);
        assert_eq!(sha256_value(&sim, 11), "9dfe399fcd4432639f0e20f49df823aa66b095f0664f0a4b9fbdc11ea64683e2");
    }

    #[test]
    fn json_has_go_key_order_and_escaping() {
        let mut sim = Simulator::default();
        sim.extend(9, Digests::filled(0), Some(vec![1, 2]), "a <b> & c".into());
        let json = sim.to_json(Bank::Sha256, &[]);
        assert!(json.starts_with("{\"measurements\":{\"11\":{\"expected\":\""), "{json}");
        let order: Vec<usize> = ["\"11\"", "\"12\"", "\"13\"", "\"15\"", "\"4\"", "\"7\"", "\"8\"", "\"9\""]
            .iter()
            .map(|k| json.find(k).unwrap_or(usize::MAX))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(json.contains("\"Data\":\"AQI=\",\"Description\":\"a \\u003cb\\u003e \\u0026 c\"}"), "{json}");
        assert!(json.ends_with("]}}\n"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(parsed["EventLog"]["Events"][0]["PCRIndex"], 9);
    }

    #[test]
    fn the_document_is_written_in_the_bank_asked_for_with_extra_members_last() {
        let mut sim = Simulator::default();
        sim.extend_data(4, b"x".to_vec(), "x".into());
        let json = sim.to_json(Bank::Sha384, &[("pcr11Phases", "{}".into())]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(parsed["measurements"]["4"]["expected"], hex(&sim.value(4, Bank::Sha384)));
        assert_eq!(parsed["measurements"]["4"]["expected"].as_str().map(str::len), Some(96));
        assert_eq!(parsed["EventLog"]["Events"][0]["Digest"], hex(&Bank::Sha384.hash(b"x")));
        assert!(json.ends_with("]},\"pcr11Phases\":{}}\n"), "{json}");
    }

    #[test]
    fn machine_dependent_pcrs_are_marked_warn_only() {
        let mut sim = Simulator::default();
        sim.machine_dependent.insert(9);
        let json = sim.to_json(Bank::Sha256, &[]);
        assert!(json.contains("\"9\":{\"expected\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"warnOnly\":true}"), "{json}");
        assert!(
            json.contains("\"4\":{\"expected\":\"0000000000000000000000000000000000000000000000000000000000000000\"}"),
            "{json}"
        );
    }

    #[test]
    fn go_quote_escapes_like_go() {
        let mut input = b"a \"b\"\\\n\0\x7f\xff".to_vec();
        input.extend_from_slice("é".as_bytes());
        assert_eq!(go_quote(&input), "\"a \\\"b\\\"\\\\\\n\\x00\\x7f\\xffé\"");
    }
}
