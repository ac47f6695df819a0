//! The certificates an `additionalSignatures` entry names: read here, where the configuration is checked, and by
//! the Azure provider, which uploads them, so configuration depends on no provider.

use base64::Engine;

/// The DER bytes of an `additionalSignatures` entry: a certificate file, or base64 of one (the Go tool's form).
pub fn signature_der(entry: &str) -> Option<Vec<u8>> {
    let looks_like_der = |bytes: &[u8]| bytes.len() > 16 && bytes[0] == 0x30;
    let path = std::path::Path::new(entry);
    if path.is_file() {
        let bytes = std::fs::read(path).ok()?;
        if looks_like_der(&bytes) {
            return Some(bytes);
        }
        // A PEM file: its first certificate.
        let text = String::from_utf8(bytes).ok()?;
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        return base64::engine::general_purpose::STANDARD.decode(body.trim()).ok().filter(|b| looks_like_der(b));
    }
    base64::engine::general_purpose::STANDARD.decode(entry.trim()).ok().filter(|b| looks_like_der(b))
}
