//! The boot request's query, read in one pass without a map (the boot
//! path is the agent's hottest): the MAC and the facts iPXE sends.
//!
//! A repeated key keeps its last value, as a map would; unknown keys are
//! ignored. iPXE sends unset settings as empty strings: those are None.
//! A pair is percent-decoded (`application/x-www-form-urlencoded`) only
//! when it holds a `%` or a `+`: what iPXE sends for a MAC, an
//! architecture or a platform never does, and a query that reached us is
//! already UTF-8, so the common pair is read in place, not copied twice.

use std::borrow::Cow;

use crate::model::boot::BootFacts;

#[derive(Default)]
pub struct BootQuery<'a> {
    pub mac: Option<Cow<'a, str>>,
    pub format: Option<Cow<'a, str>>,
    pub facts: BootFacts,
}

impl<'a> BootQuery<'a> {
    pub fn read(query: &'a str) -> BootQuery<'a> {
        let mut read = BootQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = decode_pair(pair);
            let value = trim(&raw);
            let kept = || (!value.is_empty()).then(|| value.to_string());
            match key.as_ref() {
                "mac" => read.mac = Some(raw),
                "format" => read.format = (!value.is_empty()).then(|| Cow::Owned(value.into())),
                "arch" => read.facts.arch = kept(),
                "platform" => read.facts.platform = kept(),
                "uuid" => read.facts.uuid = kept(),
                "serial" => read.facts.serial = kept(),
                "manufacturer" => read.facts.manufacturer = kept(),
                "product" => read.facts.product = kept(),
                _ => {}
            }
        }
        read
    }
}

/// `str::trim`, without its character walk when both ends are plain
/// ASCII (every Unicode space begins with an ASCII space or a non-ASCII
/// byte, and ends with an ASCII space or a non-ASCII byte).
fn trim(value: &str) -> &str {
    let plain = |b: u8| b.is_ascii() && !b.is_ascii_whitespace();
    match (value.as_bytes().first(), value.as_bytes().last()) {
        (Some(&first), Some(&last)) if plain(first) && plain(last) => value,
        _ => value.trim(),
    }
}

/// One `key=value` (a pair without `=` is a key with an empty value).
fn decode_pair(pair: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    if pair.bytes().any(|b| b == b'%' || b == b'+') {
        // The encoded case, rare: the form decoder's own rules (invalid
        // UTF-8 after decoding becomes U+FFFD).
        let mut decoded = form_urlencoded::parse(pair.as_bytes());
        if let Some((key, value)) = decoded.next() {
            return (Cow::Owned(key.into_owned()), Cow::Owned(value.into_owned()));
        }
    }
    match pair.bytes().position(|b| b == b'=') {
        Some(at) => (Cow::Borrowed(&pair[..at]), Cow::Borrowed(&pair[at + 1..])),
        None => (Cow::Borrowed(pair), Cow::Borrowed("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pairs_are_read_as_given() {
        let q = BootQuery::read("mac=52:54:00:12:34:56&arch=x86_64&platform=efi&uuid=");
        assert_eq!(q.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(q.facts.arch.as_deref(), Some("x86_64"));
        assert_eq!(q.facts.platform.as_deref(), Some("efi"));
        assert_eq!(q.facts.uuid, None, "an empty value is unset");
    }

    #[test]
    fn encoded_pairs_are_decoded_as_a_form_decoder_would() {
        for query in [
            "mac=52%3A54%3A00%3A12%3A34%3A56&product=Power+Edge%20R650&format=grub",
            "m%61c=52:54:00:12:34:56&product=Power%20Edge+R650&&format=grub",
            "serial&mac=52:54:00:12:34:56&product=Power+Edge+R650&format=%67rub",
            "mac=00:00:00:00:00:00&mac=52:54:00:12:34:56&product=Power+Edge+R650&format=grub&x=%ff",
        ] {
            let ours = BootQuery::read(query);
            let mut reference = std::collections::HashMap::new();
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                reference.insert(k.into_owned(), v.into_owned());
            }
            assert_eq!(
                ours.mac.as_deref(),
                reference.get("mac").map(String::as_str),
                "{query}"
            );
            assert_eq!(
                ours.format.as_deref(),
                reference.get("format").map(String::as_str),
                "{query}"
            );
            assert_eq!(
                ours.facts.product.as_ref(),
                reference.get("product"),
                "{query}"
            );
            assert_eq!(ours.facts.serial, None, "{query}");
        }
    }

    #[test]
    fn a_value_is_trimmed_but_the_mac_is_kept_raw_for_its_error() {
        let q = BootQuery::read("mac=%20zz%20&arch=%20x86_64%20");
        assert_eq!(q.mac.as_deref(), Some(" zz "));
        assert_eq!(q.facts.arch.as_deref(), Some("x86_64"));
    }
}
