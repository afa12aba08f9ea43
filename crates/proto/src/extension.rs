//! `Sec-WebSocket-Extensions` header values (RFC 6455 §9.1): parsing and formatting.
//!
//! ```text
//! extension-list = 1#extension
//! extension      = token *( ";" param )
//! param          = token [ "=" ( token | quoted-string ) ]
//! ```

use crate::error::HandshakeError;
use crate::handshake::is_token;

/// One extension of a list, with its parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The extension name, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters: name and value (`None` for a parameter without `=`).
    pub params: Vec<(String, Option<String>)>,
}

/// Parses one or more header values into the list of extensions they offer or accept.
///
/// # Errors
/// [`HandshakeError::InvalidHeader`] for anything that is not an extension list: an empty
/// element, a name or parameter that is not a token, a bad quoted string.
pub fn parse<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Extension>, HandshakeError> {
    let invalid = || HandshakeError::InvalidHeader("Sec-WebSocket-Extensions");
    let mut out = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, ',').map_err(|_| invalid())? {
            let mut parts = split_outside_quotes(element, ';')
                .map_err(|_| invalid())?
                .into_iter();
            let name = parts.next().unwrap_or("").trim();
            if !is_token(name) {
                return Err(invalid());
            }
            let mut params = Vec::new();
            for param in parts {
                let (key, value) = match param.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim()).ok_or_else(invalid)?)),
                    None => (param.trim(), None),
                };
                if !is_token(key) {
                    return Err(invalid());
                }
                params.push((key.to_owned(), value));
            }
            out.push(Extension {
                name: name.to_owned(),
                params,
            });
        }
    }
    Ok(out)
}

/// Formats an extension as a header element: `name; a; b=1`.
pub fn format(extension: &Extension) -> String {
    let mut s = extension.name.clone();
    for (key, value) in &extension.params {
        s.push_str("; ");
        s.push_str(key);
        if let Some(value) = value {
            s.push('=');
            s.push_str(value);
        }
    }
    s
}

/// Splits on `sep` outside double quotes; fails on an unterminated quote.
fn split_outside_quotes(s: &str, sep: char) -> Result<Vec<&str>, ()> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err(());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A parameter value: a token, or a quoted string whose content is a token (RFC 6455
/// §9.1: "the value MUST conform to the token ABNF" after unquoting).
fn unquote(v: &str) -> Option<String> {
    let inner = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?.replace('\\', ""),
        None => v.to_owned(),
    };
    is_token(&inner).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
        Extension {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(String::from)))
                .collect(),
        }
    }

    // RFC 6455 §9.1, RFC 7692 §5 examples.
    #[test]
    fn parses_lists_params_and_quotes() {
        let parsed = parse(["permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=\"10\"", "x-foo"]).unwrap();
        assert_eq!(
            parsed,
            [
                ext("permessage-deflate", &[("client_max_window_bits", None)]),
                ext(
                    "permessage-deflate",
                    &[("server_max_window_bits", Some("10"))]
                ),
                ext("x-foo", &[]),
            ]
        );
        assert_eq!(
            format(&parsed[1]),
            "permessage-deflate; server_max_window_bits=10"
        );
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [
            "",
            "a,,b",
            "per message",
            "a; =1",
            "a; b=\"1",
            "a; b=c d",
            "a; b=\"\"",
        ] {
            assert!(parse([bad]).is_err(), "{bad:?}");
        }
    }
}
