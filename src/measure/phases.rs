//! PCR 11 after boot phases: systemd-pcrphase extends PCR 11 with the hash of a word (no NUL) as the boot goes on
//! (`enter-initrd`, `leave-initrd`, `sysinit`, `ready`), so a verifier that quotes PCR 11 after boot sees the
//! UKI's value extended by them. `systemd-measure calculate --phase=WORD:WORD…` computes the same.

use thiserror::Error;

use super::digest::{Bank, Digests};
use super::pcr::Simulator;

/// The phases of a boot up to the running system, in order: systemd-measure's default phase paths are the
/// prefixes of this.
pub const STANDARD_PATH: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// Every word systemd-pcrphase extends PCR 11 with (boot and shutdown), for reading a boot's extends back.
pub const KNOWN_WORDS: [&str; 6] = ["enter-initrd", "leave-initrd", "sysinit", "ready", "shutdown", "final"];

/// Why a `--phase` is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PhaseError {
    /// Nothing, or an empty word between colons.
    #[error("--phase {0:?} has an empty word; give words separated by colons, e.g. enter-initrd:leave-initrd")]
    Empty(String),
    /// A character systemd-pcrphase words do not have.
    #[error(
        "--phase {text:?}: the word {word:?} has {bad:?}; phase words are lower-case letters, digits and '-' \
         (e.g. enter-initrd:leave-initrd:sysinit:ready)"
    )]
    BadCharacter {
        /// The whole argument.
        text: String,
        /// The word.
        word: String,
        /// The first character outside `[a-z0-9-]`.
        bad: char,
    },
}

/// The words of a `--phase` argument (`enter-initrd:leave-initrd`).
pub fn parse(text: &str) -> Result<Vec<String>, PhaseError> {
    let mut words = Vec::new();
    for word in text.split(':') {
        if word.is_empty() {
            return Err(PhaseError::Empty(text.to_string()));
        }
        if let Some(bad) = word.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(PhaseError::BadCharacter { text: text.to_string(), word: word.to_string(), bad });
        }
        words.push(word.to_string());
    }
    Ok(words)
}

/// `value` extended with each word, in every bank.
pub fn after(value: &Digests, words: &[impl AsRef<str>]) -> Digests {
    let mut out = *value;
    for word in words {
        out.extend(&Digests::of(word.as_ref().as_bytes()));
    }
    out
}

/// Extends PCR 11 in `sim` with each word, logged as systemd-pcrphase's events.
pub fn extend(sim: &mut Simulator, words: &[String]) {
    for word in words {
        sim.extend_data(11, word.as_bytes().to_vec(), format!("EV_IPL: systemd-pcrphase {word}"));
    }
}

/// The phase paths systemd-measure reports by default, then those of `words` it does not hold: each prefix,
/// joined with colons (`enter-initrd`, `enter-initrd:leave-initrd`, …).
pub fn paths(words: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let standard: Vec<String> = STANDARD_PATH.iter().map(|w| w.to_string()).collect();
    for path in [&standard[..], words] {
        for end in 1..=path.len() {
            let prefix = path[..end].to_vec();
            if !out.contains(&prefix) {
                out.push(prefix);
            }
        }
    }
    out
}

/// The phase word whose hash in `bank` is `digest`, if it is one systemd-pcrphase uses.
pub fn word_of(digest: &[u8], bank: Bank) -> Option<&'static str> {
    KNOWN_WORDS.into_iter().find(|w| bank.hash(w.as_bytes()) == digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::pcr::hex;

    #[test]
    fn phases_are_colon_separated_words_of_lower_case_letters_digits_and_dashes() {
        assert_eq!(parse("enter-initrd:leave-initrd"), Ok(vec!["enter-initrd".into(), "leave-initrd".into()]));
        assert_eq!(parse("ready"), Ok(vec!["ready".into()]));
        assert_eq!(parse(""), Err(PhaseError::Empty(String::new())));
        assert_eq!(parse("a::b"), Err(PhaseError::Empty("a::b".into())));
        assert!(matches!(parse("enter initrd"), Err(PhaseError::BadCharacter { bad: ' ', .. })));
        assert!(matches!(parse("Ready"), Err(PhaseError::BadCharacter { bad: 'R', .. })));
    }

    #[test]
    fn a_phase_extends_pcr11_with_the_hash_of_the_word_without_nul() {
        let start = Digests::filled(0);
        let value = after(&start, &["enter-initrd"]);
        let expected = Bank::Sha256.extend(&[0; 32], &Bank::Sha256.hash(b"enter-initrd"));
        assert_eq!(hex(&value.sha256), hex(&expected));
        assert_eq!(word_of(&Bank::Sha384.hash(b"leave-initrd"), Bank::Sha384), Some("leave-initrd"));
        assert_eq!(word_of(&[0; 32], Bank::Sha256), None);
    }

    #[test]
    fn the_standard_paths_come_first_then_the_ones_asked_for() {
        let asked = vec!["enter-initrd".to_string(), "custom".to_string()];
        let joined: Vec<String> = paths(&asked).iter().map(|p| p.join(":")).collect();
        assert_eq!(
            joined,
            [
                "enter-initrd",
                "enter-initrd:leave-initrd",
                "enter-initrd:leave-initrd:sysinit",
                "enter-initrd:leave-initrd:sysinit:ready",
                "enter-initrd:custom"
            ]
        );
    }
}
