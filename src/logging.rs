//! stderr logging: one line per event, `LEVEL variant: message`, with an RFC 3339 timestamp first when stderr is
//! not a terminal (CI logs), ANSI colours only on a terminal without `NO_COLOR`, and secrets masked in every line
//! (and in the final error message) at every verbosity.

use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use regex::Regex;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether stderr gets colours: a terminal, and `NO_COLOR` unset or empty (no-color.org).
pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the subscriber: `level` for uplosi's own lines, `warn` for libraries, unless `RUST_LOG` says otherwise.
pub fn init(level: &str) {
    crate::timeline::start();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("uplosi={level},warn")));
    let format = LineFormat { time: !std::io::stderr().is_terminal() };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(color())
        .event_format(format)
        .init();
}

/// Log output on stderr, secrets masked, written with the progress bars out of the way (so log lines and bars never
/// overwrite each other). The `tracing_subscriber` writer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Each call is one formatted event; secrets are masked whatever the verbosity.
        let text = String::from_utf8_lossy(buf);
        let line = redact(&text);
        crate::progress::suspend(|| std::io::stderr().write_all(line.as_bytes())).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// The line layout described in the module docs.
struct LineFormat {
    time: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.time {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        let level = *event.metadata().level();
        let (name, colour) = match level {
            Level::ERROR => ("ERROR", "31"),
            Level::WARN => (" WARN", "33"),
            Level::INFO => (" INFO", "32"),
            Level::DEBUG => ("DEBUG", "34"),
            Level::TRACE => ("TRACE", "35"),
        };
        if writer.has_ansi_escapes() {
            write!(writer, "\x1b[{colour}m{name}\x1b[0m ")?;
        } else {
            write!(writer, "{name} ")?;
        }
        // The variant a line belongs to (release::span), so parallel variants' lines can be told apart.
        let mut variant = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root().filter(|s| s.name() == "variant") {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    let plain = strip_ansi(&fields.fields);
                    variant = Some(plain.trim_start_matches("name=").to_string());
                }
            }
        }
        if let Some(name) = variant.as_deref().filter(|n| !n.is_empty()) {
            write!(writer, "{name}: ")?;
        }
        let mut message = String::new();
        ctx.field_format().format_fields(Writer::new(&mut message), event)?;
        writer.write_str(&message)?;
        // On a terminal, the variant's stage line shows its latest step.
        if let Some(name) = &variant
            && level <= Level::INFO
        {
            crate::progress::stage_from_log(name, &strip_ansi(&message));
        }
        writeln!(writer)
    }
}

/// `text` without ANSI SGR sequences (span fields are formatted with colours on a terminal).
fn strip_ansi(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Masks credentials in `text`: SAS `sig=`, presigned `X-Amz-Signature` / `X-Amz-Security-Token`, the
/// `upload_id` of a GCS resumable session URI (whoever has it can write the object), `Authorization` and
/// `X-Auth-Token` / `X-Subject-Token` headers, bearer tokens, PEM private keys, and `password`, `secret`, `token`
/// values (as clouds.yaml, JSON bodies or `Debug` output spell them).
pub fn redact(text: &str) -> Cow<'_, str> {
    static PATTERNS: OnceLock<Vec<Regex>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        [
            // Query parameters: the value runs to the next separator.
            r"(?i)((?:[?&]|\b)(?:sig|x-amz-signature|x-amz-security-token|x-amz-credential|client_secret|access_token|upload_id)=)[^&\s\x22'<>)]+",
            // A PEM private key (a service-account key file's `private_key`), whole.
            r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            // A bearer token wherever it stands.
            r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+",
            // Headers, as text or as Debug/JSON pairs: the rest of the value (it may contain spaces).
            r#"(?i)((?:authorization|x-auth-token|x-subject-token|x-ms-copy-source-authorization)\x22?\s*[:=]\s*\x22?)[^\x22\n\r]+"#,
            // Secrets as keys of clouds.yaml, JSON or Debug output.
            r#"(?i)(\b(?:password|application_credential_secret|client_secret|secret|token|private_key)\x22?\s*[:=]\s*\x22?)[^\x22\s,}&]+"#,
        ]
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect()
    });
    let mut out = Cow::Borrowed(text);
    for pattern in patterns {
        if pattern.is_match(&out) {
            out = Cow::Owned(pattern.replace_all(&out, "${1}[REDACTED]").into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped_from_span_fields() {
        assert_eq!(strip_ansi("\x1b[3mname\x1b[0m\x1b[2m=\x1b[0mos"), "name=os");
        assert_eq!(strip_ansi("name=aws"), "name=aws");
    }

    #[test]
    fn secrets_are_masked_and_the_rest_is_kept() {
        let cases = [
            (
                "PUT https://acct.blob.core.windows.net/c/disk?sv=2022-11-02&sr=b&sig=abc%2Bdef%3D&se=2026 failed",
                "PUT https://acct.blob.core.windows.net/c/disk?sv=2022-11-02&sr=b&sig=[REDACTED]&se=2026 failed",
            ),
            (
                "GET /b/k?X-Amz-Algorithm=AWS4&X-Amz-Signature=0123abcd&X-Amz-Security-Token=FQo HTTP/1.1",
                "GET /b/k?X-Amz-Algorithm=AWS4&X-Amz-Signature=[REDACTED]&X-Amz-Security-Token=[REDACTED] HTTP/1.1",
            ),
            (
                r#"headers: {"authorization": "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff", "host": "h"}"#,
                r#"headers: {"authorization": "[REDACTED]", "host": "h"}"#,
            ),
            ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: [REDACTED]"),
            ("X-Auth-Token: gAAAAABk-token", "X-Auth-Token: [REDACTED]"),
            (r#"{"password": "s3cret-pw", "name": "ci"}"#, r#"{"password": "[REDACTED]", "name": "ci"}"#),
            ("auth: password: hunter2 username: ci", "auth: password: [REDACTED] username: ci"),
            ("application_credential_secret=app-s3cret", "application_credential_secret=[REDACTED]"),
            (
                "error sending request for url (http://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=ADPy3x)",
                "error sending request for url (http://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=[REDACTED])",
            ),
            (
                "key: -----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY----- end",
                "key: -----BEGIN PRIVATE KEY-----[REDACTED] end",
            ),
            (
                "the server refused bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln here",
                "the server refused bearer [REDACTED] here",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
        let plain = "openstack: created image \"podvm-1.2.3\" (1db4e7df) in cloud \"test\"";
        assert!(matches!(redact(plain), Cow::Borrowed(_)));
        assert_eq!(redact("the token endpoint answered"), "the token endpoint answered");
    }
}
