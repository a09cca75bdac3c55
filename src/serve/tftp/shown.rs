//! Names a peer chose, cut to a readable length before they are logged
//! (the per-peer log throttle itself is [`crate::ratelimit::LogThrottle`]).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_and_escaped() {
        assert_eq!(shown("pxelinux.0"), "pxelinux.0");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "x".repeat(10_000);
        assert!(shown(&long).chars().count() <= SHOWN_CHARS + 1);
    }
}
