//! What may reach a log (DESIGN §10): values a peer chose, escaped and cut
//! to a readable length (the per-peer log throttle itself is
//! [`crate::ratelimit::LogThrottle`]), and URLs with their credentials
//! taken out.

/// Characters of a peer-chosen name that reach the log.
const SHOWN_CHARS: usize = 128;

/// A peer-chosen string as it may appear in the log: control characters
/// escaped, at most [`SHOWN_CHARS`] characters, the cut marked.
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

/// `text` with the userinfo of every URL in it (`http://user:secret@host`)
/// replaced by `***`: `central.url` may carry credentials, and error
/// messages (reqwest's among them) repeat the URL they were about.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"' || c == ')'
            })
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_taken_out() {
        assert_eq!(
            redact_userinfo("http://admin:S3cretPass@ctl.example:8000/api"),
            "http://***@ctl.example:8000/api"
        );
        assert_eq!(
            redact_userinfo("error sending request for url (https://u:p@h/x): refused"),
            "error sending request for url (https://***@h/x): refused"
        );
        assert_eq!(
            redact_userinfo("http://ctl:8000/a@b"),
            "http://ctl:8000/a@b"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(
            redact_userinfo("a http://x:y@h b https://h2 c"),
            "a http://***@h b https://h2 c"
        );
    }

    #[test]
    fn names_are_cut_and_escaped() {
        assert_eq!(shown("pxelinux.0"), "pxelinux.0");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "x".repeat(10_000);
        assert!(shown(&long).chars().count() <= SHOWN_CHARS + 1);
    }
}
