//! `${NAME}` and `${NAME:-fallback}` expansion in configuration text.

/// A variable referenced by the configuration has no value.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `${NAME}` with `NAME` unset and no fallback.
    #[error("line {line}: environment variable {name} is not set; export it or write ${{{name}:-fallback}}")]
    Unset {
        /// 1-based line of the reference.
        line: usize,
        /// The variable.
        name: String,
    },
    /// `${` without a closing `}` or with an invalid name.
    #[error("line {line}: malformed variable reference {text:?}; write ${{NAME}} or ${{NAME:-fallback}} (or $${{ for a literal)")]
    Malformed {
        /// 1-based line of the reference.
        line: usize,
        /// The text from `${` on.
        text: String,
    },
}

/// Replaces `${NAME}` / `${NAME:-fallback}` using `lookup`; `$${` is a
/// literal `${`. Comment lines are left as they are, so documentation in a
/// config file may mention variables that are not set.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            expand_line(line, index + 1, &lookup, &mut out)?;
        }
    }
    Ok(out)
}

/// Escapes `text` so that [`expand_env`] turns it back into `text`: every
/// `${` becomes `$${`. Tools that write a configuration file (the operator)
/// use it on values that must reach the proxy literally, such as a URL taken
/// from a user's resource, so a `${` in them is never read as a variable.
///
/// Lines whose first non-blank character is `#` are not expanded, so a value
/// written on such a line (a multi-line YAML block) keeps the doubled `$`;
/// single-line values are unaffected.
pub fn escape_env(text: &str) -> String {
    text.replace("${", "$${")
}

fn expand_line(
    text: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), EnvError> {
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let malformed = || EnvError::Malformed {
                line,
                text: after.chars().take(40).collect(),
            };
            let end = body.find('}').ok_or_else(malformed)?;
            let inner = &body[..end];
            let (name, fallback) = match inner.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(malformed());
            }
            match (lookup(name), fallback) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => {
                    return Err(EnvError::Unset {
                        line,
                        name: name.to_string(),
                    })
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_set_and_fallback() {
        let out = expand_env("a: ${TOKEN}\nb: ${MISSING:-x}\nc: $5", env).unwrap();
        assert_eq!(out, "a: s3cret\nb: x\nc: $5");
    }

    #[test]
    fn comment_lines_are_not_expanded() {
        let text = "# set ${UNSET_THING} to configure\na: ${TOKEN}\n";
        assert_eq!(
            expand_env(text, env).unwrap(),
            "# set ${UNSET_THING} to configure\na: s3cret\n"
        );
    }

    #[test]
    fn literal_escape() {
        assert_eq!(expand_env("a: $${TOKEN}", env).unwrap(), "a: ${TOKEN}");
    }

    #[test]
    fn escaped_text_expands_back_to_itself() {
        // Nothing is looked up: an escaped value never reads the environment.
        let never = |name: &str| -> Option<String> { panic!("looked up {name}") };
        for text in [
            "https://gw.example.com/${TENANT}/v1",
            "${",
            "$${already}",
            "$$${X}",
            "a$b$$c${d}$",
            "${A:-b}${B}",
            "",
        ] {
            let escaped = escape_env(text);
            assert_eq!(expand_env(&escaped, never).unwrap(), text, "{escaped}");
        }
        assert_eq!(escape_env("${X}"), "$${X}");
        assert_eq!(escape_env("no dollar"), "no dollar");
    }

    #[test]
    fn unset_names_variable_and_line() {
        let err = expand_env("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert!(matches!(err, EnvError::Unset { line: 2, ref name } if name == "NOPE"));
        assert!(err.to_string().contains("NOPE"));
    }

    #[test]
    fn malformed_is_reported() {
        assert!(matches!(
            expand_env("a: ${TOKEN", env),
            Err(EnvError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            expand_env("a: ${1X}", env),
            Err(EnvError::Malformed { .. })
        ));
    }
}
