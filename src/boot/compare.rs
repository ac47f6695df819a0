//! The boot's PCR extends, as swtpm received them, held against the event log `uplosi measurements` computes:
//! event by event for each judged PCR, up to the events the model predicts (what the firmware, the stub and the
//! kernel extend before user space starts); whatever the PCR received after that (systemd-pcrphase, NvPCR
//! anchors, …) is listed, not judged.

use std::collections::BTreeMap;

use super::tpmlog::{self, Extend};
use crate::measure::digest::Bank;
use crate::measure::pcr::Event;

/// The PCRs the boot check judges.
pub const JUDGED: [u32; 6] = [4, 7, 9, 11, 12, 13];

/// One PCR: the value the model predicts, the value the boot produced by the same point, and whether they agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrCheck {
    /// The predicted value.
    pub expected: Vec<u8>,
    /// The value after as many of the boot's extends as the model predicts.
    pub actual: Vec<u8>,
    /// Every predicted event was there, with the predicted digest.
    pub matches: bool,
}

/// An event that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The PCR.
    pub pcr: u32,
    /// 1-based position among the PCR's events.
    pub position: usize,
    /// What the model says the event is (`None` for an event the model does not predict).
    pub description: Option<String>,
    /// The predicted digest, if the model predicts an event here.
    pub expected: Option<Vec<u8>>,
    /// The digest the TPM received, if it received one here.
    pub actual: Option<Vec<u8>>,
}

/// An extend after those the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaterEvent {
    /// The PCR.
    pub pcr: u32,
    /// 1-based position among the PCR's events.
    pub position: usize,
    /// The digest.
    pub digest: Vec<u8>,
}

/// The outcome of comparing a boot with the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Per judged PCR.
    pub pcrs: BTreeMap<u32, PcrCheck>,
    /// The events that differ, in PCR then position order.
    pub mismatches: Vec<Mismatch>,
    /// The extends after the predicted ones.
    pub later: Vec<LaterEvent>,
}

/// Compares the `actual` extends of `bank` with the `expected` events for every PCR in [`JUDGED`].
pub fn compare(expected: &[Event], actual: &[Extend], bank: Bank) -> Comparison {
    let mut out = Comparison::default();
    for pcr in JUDGED {
        let wanted: Vec<&Event> = expected.iter().filter(|e| e.pcr == pcr).collect();
        let got: Vec<&Extend> = actual.iter().filter(|e| e.pcr == pcr).collect();
        for position in 0..wanted.len().max(got.len()) {
            let (want, have) = (wanted.get(position), got.get(position));
            match (want, have) {
                (Some(w), Some(h)) if w.digest.get(bank) == h.digest.as_slice() => {}
                (None, Some(h)) => out.later.push(LaterEvent { pcr, position: position + 1, digest: h.digest.clone() }),
                _ => out.mismatches.push(Mismatch {
                    pcr,
                    position: position + 1,
                    description: want.map(|w| w.description.clone()),
                    expected: want.map(|w| w.digest.get(bank).to_vec()),
                    actual: have.map(|h| h.digest.clone()),
                }),
            }
        }
        let predicted = wanted.iter().fold(bank.zero(), |value, event| bank.extend(&value, event.digest.get(bank)));
        let reached = tpmlog::value(actual, bank, pcr, Some(wanted.len()));
        let matches = !out.mismatches.iter().any(|m| m.pcr == pcr);
        out.pcrs.insert(pcr, PcrCheck { expected: predicted, actual: reached, matches });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::digest::Digests;

    fn event(pcr: u32, d: u8) -> Event {
        Event { pcr, digest: Digests::filled(d), data: None, description: format!("event {d}") }
    }

    fn extend(pcr: u32, d: u8) -> Extend {
        Extend { pcr, digest: vec![d; 32] }
    }

    #[test]
    fn equal_events_match_and_later_ones_are_listed() {
        let expected = [event(4, 1), event(4, 2), event(11, 3)];
        let actual = [extend(4, 1), extend(11, 3), extend(4, 2), extend(11, 9)];
        let c = compare(&expected, &actual, Bank::Sha256);
        assert!(c.mismatches.is_empty(), "{c:?}");
        assert_eq!(c.later, [LaterEvent { pcr: 11, position: 2, digest: vec![9; 32] }]);
        assert!(c.pcrs[&4].matches && c.pcrs[&4].expected == c.pcrs[&4].actual);
        assert_eq!(c.pcrs[&11].actual, Bank::Sha256.extend(&[0; 32], &[3; 32]), "the value where user space starts");
        assert_eq!(c.pcrs[&9].expected, vec![0; 32]);
    }

    #[test]
    fn a_missing_or_different_event_is_named_by_position() {
        let expected = [event(4, 1), event(4, 2), event(4, 3)];
        let actual = [extend(4, 1), extend(4, 7)];
        let c = compare(&expected, &actual, Bank::Sha256);
        assert!(!c.pcrs[&4].matches);
        assert_eq!(c.mismatches.len(), 2);
        assert_eq!(c.mismatches[0].position, 2);
        assert_eq!(c.mismatches[0].description.as_deref(), Some("event 2"));
        assert_eq!(c.mismatches[0].actual, Some(vec![7; 32]));
        assert_eq!((c.mismatches[1].position, c.mismatches[1].actual.clone()), (3, None));
    }
}
