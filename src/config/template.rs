//! The Go-template subset that uplosi.conf values may use, rendered as plain text.
//!
//! The Go tool renders its templates with `html/template`, so a `+` or `&` in a name came out HTML-escaped. Cloud
//! resource names are not HTML, so this renderer never escapes. No template crate implements Go's syntax closely
//! enough (gtmpl escapes nothing but lacks `{{-` trimming and raw strings), and the subset is small, so it lives here.
//!
//! Supported: text, `{{.Field}}`, string literals (`"…"` with Go escapes and `` `…` ``), the function `replaceAll`,
//! pipelines (`{{.Version | replaceAll "." "-"}}` passes the value as the last argument, as Go does), comments
//! (`{{/* … */}}`) and whitespace trimming markers (`{{-` and `-}}`).

use thiserror::Error;

/// Values a template can refer to, named as in the Go tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateData {
    /// `{{.Name}}`
    pub name: String,
    /// `{{.Version}}`
    pub version: String,
    /// `{{.VersionMajor}}`, empty unless the version has three parts.
    pub version_major: String,
    /// `{{.VersionMinor}}`
    pub version_minor: String,
    /// `{{.VersionPatch}}`
    pub version_patch: String,
}

impl TemplateData {
    /// Builds the data for an image name and a `MAJOR.MINOR.PATCH` version.
    pub fn new(name: &str, version: &str) -> Self {
        let parts: Vec<&str> = version.split('.').collect();
        let (major, minor, patch) = match parts.as_slice() {
            [a, b, c] => (a.to_string(), b.to_string(), c.to_string()),
            _ => Default::default(),
        };
        Self {
            name: name.to_string(),
            version: version.to_string(),
            version_major: major,
            version_minor: minor,
            version_patch: patch,
        }
    }

    fn field(&self, field: &str) -> Option<&str> {
        Some(match field {
            "Name" => &self.name,
            "Version" => &self.version,
            "VersionMajor" => &self.version_major,
            "VersionMinor" => &self.version_minor,
            "VersionPatch" => &self.version_patch,
            _ => return None,
        })
    }
}

/// Why a template could not be rendered. `column` counts characters from 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("column {column}: unclosed action: `{{{{` without `}}}}`")]
    Unclosed { column: usize },
    /// A field other than the five the Go tool provides.
    #[error(
        "column {column}: unknown field `.{field}` (known: .Name, .Version, .VersionMajor, .VersionMinor, .VersionPatch)"
    )]
    UnknownField { column: usize, field: String },
    /// A function other than `replaceAll`.
    #[error("column {column}: unknown function `{name}` (only `replaceAll` is available)")]
    UnknownFunction { column: usize, name: String },
    /// `replaceAll` needs exactly three arguments.
    #[error("column {column}: `replaceAll` takes 3 arguments (string, old, new), got {got}")]
    WrongArity { column: usize, got: usize },
    /// Anything else the parser does not understand.
    #[error("column {column}: {message}")]
    Syntax { column: usize, message: String },
}

/// Renders `template` with `data`.
pub fn render(template: &str, data: &TemplateData) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut consumed = 0usize; // byte offset of `rest` in `template`
    let column = |byte: usize| template[..byte].chars().count() + 1;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        let after_open = &rest[open + 2..];
        let trim_left = after_open.starts_with("- ") || after_open.starts_with("-\t") || after_open.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        out.push_str(text);
        let action_start = consumed + open;
        let Some(close) = after_open.find("}}") else {
            return Err(TemplateError::Unclosed { column: column(action_start) });
        };
        let mut action = &after_open[..close];
        if trim_left {
            action = &action[1..];
        }
        let trim_right = action.ends_with(" -") || action.ends_with("\t-") || action.ends_with("\n-");
        if trim_right {
            action = &action[..action.len() - 1];
        }
        let value = eval_action(action, data, column(action_start))?;
        out.push_str(&value);
        let next = open + 2 + close + 2;
        consumed += next;
        rest = &rest[next..];
        if trim_right {
            let trimmed = rest.trim_start();
            consumed += rest.len() - trimmed.len();
            rest = trimmed;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(String),
    Str(String),
    Ident(String),
    Pipe,
}

fn eval_action(action: &str, data: &TemplateData, column: usize) -> Result<String, TemplateError> {
    let trimmed = action.trim();
    if trimmed.starts_with("/*") {
        if trimmed.ends_with("*/") {
            return Ok(String::new());
        }
        return Err(TemplateError::Syntax { column, message: "unclosed comment".into() });
    }
    let tokens = tokenize(trimmed, column)?;
    if tokens.is_empty() {
        return Err(TemplateError::Syntax { column, message: "missing value for command".into() });
    }
    let mut value: Option<String> = None;
    for command in tokens.split(|t| *t == Token::Pipe) {
        value = Some(eval_command(command, value, data, column)?);
    }
    Ok(value.unwrap_or_default())
}

fn eval_command(
    command: &[Token],
    piped: Option<String>,
    data: &TemplateData,
    column: usize,
) -> Result<String, TemplateError> {
    let operand = |token: &Token| -> Result<String, TemplateError> {
        match token {
            Token::Field(f) => data
                .field(f)
                .map(str::to_string)
                .ok_or_else(|| TemplateError::UnknownField { column, field: f.clone() }),
            Token::Str(s) => Ok(s.clone()),
            Token::Ident(name) => Err(TemplateError::Syntax {
                column,
                message: format!("function `{name}` cannot be an argument; use a pipeline or parentheses-free call"),
            }),
            Token::Pipe => Err(TemplateError::Syntax { column, message: "empty pipeline stage".into() }),
        }
    };
    match command {
        [] => Err(TemplateError::Syntax { column, message: "empty pipeline stage".into() }),
        [Token::Ident(name), args @ ..] => {
            if name != "replaceAll" {
                return Err(TemplateError::UnknownFunction { column, name: name.clone() });
            }
            let mut values = args.iter().map(operand).collect::<Result<Vec<_>, _>>()?;
            values.extend(piped);
            match values.as_slice() {
                [s, old, new] => Ok(go_replace_all(s, old, new)),
                _ => Err(TemplateError::WrongArity { column, got: values.len() }),
            }
        }
        [single] if piped.is_none() => operand(single),
        _ => Err(TemplateError::Syntax { column, message: "a value cannot take arguments; only functions can".into() }),
    }
}

/// Go's `strings.ReplaceAll`: an empty `old` inserts `new` around every character.
fn go_replace_all(s: &str, old: &str, new: &str) -> String {
    if old.is_empty() {
        let mut out = String::from(new);
        for c in s.chars() {
            out.push(c);
            out.push_str(new);
        }
        return out;
    }
    s.replace(old, new)
}

fn tokenize(action: &str, column: usize) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                tokens.push(Token::Pipe);
            }
            '.' => {
                chars.next();
                let name = lex_identifier(&mut chars);
                if name.is_empty() {
                    return Err(TemplateError::Syntax {
                        column,
                        message: "`.` alone (the whole data) cannot be printed; use a field such as `.Name`".into(),
                    });
                }
                tokens.push(Token::Field(name));
            }
            '"' => {
                chars.next();
                tokens.push(Token::Str(lex_quoted(&mut chars, column)?));
            }
            '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some(c) => s.push(c),
                        None => {
                            return Err(TemplateError::Syntax { column, message: "unterminated raw string".into() });
                        }
                    }
                }
                tokens.push(Token::Str(s));
            }
            c if c.is_alphabetic() || c == '_' => tokens.push(Token::Ident(lex_identifier(&mut chars))),
            other => {
                return Err(TemplateError::Syntax {
                    column,
                    message: format!("unexpected character `{other}` in action"),
                });
            }
        }
    }
    Ok(tokens)
}

fn lex_identifier(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut name = String::new();
    while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
        name.push(c);
        chars.next();
    }
    name
}

fn lex_quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, column: usize) -> Result<String, TemplateError> {
    let mut s = String::new();
    loop {
        match chars.next() {
            Some('"') => return Ok(s),
            Some('\\') => match chars.next() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('r') => s.push('\r'),
                Some('\\') => s.push('\\'),
                Some('"') => s.push('"'),
                Some('\'') => s.push('\''),
                Some(other) => {
                    return Err(TemplateError::Syntax {
                        column,
                        message: format!("unknown escape `\\{other}` in string"),
                    });
                }
                None => break,
            },
            Some(c) => s.push(c),
            None => break,
        }
    }
    Err(TemplateError::Syntax { column, message: "unterminated string".into() })
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;

    fn data() -> TemplateData {
        TemplateData::new("my-image", "1.2.3")
    }

    #[test]
    fn renders_every_field_of_the_go_tool() -> TestResult {
        let out = render("{{.Name}}/{{.Version}}/{{.VersionMajor}}/{{.VersionMinor}}/{{.VersionPatch}}", &data());
        assert_eq!(out?, "my-image/1.2.3/1/2/3");
        Ok(())
    }

    #[test]
    fn replace_all_matches_the_gcp_default() -> TestResult {
        let out = render(r#"{{.Name}}-{{replaceAll .Version "." "-"}}"#, &data())?;
        assert_eq!(out, "my-image-1-2-3");
        Ok(())
    }

    #[test]
    fn pipeline_passes_value_as_last_argument_like_go() -> TestResult {
        // Go evaluates this as strings.ReplaceAll("a.b", ".", <Version>).
        let out = render(r#"{{.Version | replaceAll "a.b" "."}}"#, &data())?;
        assert_eq!(out, "a1.2.3b");
        Ok(())
    }

    #[test]
    fn output_is_not_html_escaped() -> TestResult {
        let d = TemplateData::new("a&b<c>\"d\"+e", "1.0.0");
        assert_eq!(render("{{.Name}}", &d)?, "a&b<c>\"d\"+e");
        Ok(())
    }

    #[test]
    fn spaces_trim_markers_comments_and_raw_strings() -> TestResult {
        assert_eq!(render("{{ .Name }}", &data())?, "my-image");
        assert_eq!(render("a   {{- .Name -}}   b", &data())?, "amy-imageb");
        assert_eq!(render("x{{/* note */}}y", &data())?, "xy");
        assert_eq!(render("{{replaceAll .Version `.` `_`}}", &data())?, "1_2_3");
        assert_eq!(render(r#"{{"a\"b"}}"#, &data())?, "a\"b");
        Ok(())
    }

    #[test]
    fn literal_text_without_actions_is_unchanged() -> TestResult {
        assert_eq!(render("plain-name_1.0", &data())?, "plain-name_1.0");
        assert_eq!(render("", &data())?, "");
        Ok(())
    }

    #[test]
    fn empty_old_inserts_like_go() -> TestResult {
        assert_eq!(render(r#"{{replaceAll "ab" "" "-"}}"#, &data())?, "-a-b-");
        Ok(())
    }

    #[test]
    fn errors_name_the_problem_and_column() -> TestResult {
        assert_eq!(
            render("ab{{.Nmae}}", &data()),
            Err(TemplateError::UnknownField { column: 3, field: "Nmae".into() })
        );
        assert!(matches!(render("{{.Name", &data()), Err(TemplateError::Unclosed { column: 1 })));
        assert!(matches!(
            render("{{printf .Name}}", &data()),
            Err(TemplateError::UnknownFunction { name, .. }) if name == "printf"
        ));
        assert!(matches!(
            render(r#"{{replaceAll .Version "."}}"#, &data()),
            Err(TemplateError::WrongArity { got: 2, .. })
        ));
        assert!(matches!(render("{{.Name .Version}}", &data()), Err(TemplateError::Syntax { .. })));
        assert!(matches!(render(r#"{{"abc}}"#, &data()), Err(TemplateError::Syntax { .. })));
        assert!(matches!(render("{{}}", &data()), Err(TemplateError::Syntax { .. })));
        Ok(())
    }

    #[test]
    fn version_parts_are_empty_for_malformed_versions_like_go() -> TestResult {
        let d = TemplateData::new("n", "1.2");
        assert_eq!(render("[{{.VersionMajor}}]", &d)?, "[]");
        Ok(())
    }
}
