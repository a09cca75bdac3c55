//! MAC addresses as siteboot spells them: parsed from any common form, always
//! printed (and serialised) lower-case with colons.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit hardware address.
///
/// `macaddr` does the parsing of the delimited forms; this type exists because
/// its serde form is a byte array, while every file, URL and API of siteboot
/// uses the colon string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

/// A map keyed by MAC for the boot path's hot lookups: foldhash (seeded per
/// process) hashes six bytes in a fraction of SipHash's time, and a random
/// seed still keeps a hostile node population from choosing collisions.
pub type MacMap<V> = std::collections::HashMap<Mac, V, foldhash::fast::RandomState>;

/// Why a text is not a node's MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    /// Not six hex pairs in one of the spellings below.
    #[error(
        "invalid MAC address {input:?}: expected six hex pairs such as 52:54:00:12:34:56, \
         52-54-00-12-34-56, 5254.0012.3456 or 525400123456"
    )]
    Malformed {
        /// The text as given.
        input: String,
    },
    /// DESIGN §10: the group bit is set (broadcast, multicast): such an
    /// address names no single machine, so it is never a node.
    #[error("{input:?} is a broadcast or multicast address, never one machine's")]
    Group {
        /// The text as given.
        input: String,
    },
}

impl Mac {
    /// The MAC made of these six bytes.
    pub const fn new(bytes: [u8; 6]) -> Self {
        Mac(bytes)
    }

    /// The six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// `52-54-00-12-34-56`: the form PXELINUX-style file names and
    /// `BOOTIF=` kernel arguments use.
    pub fn hyphenated(&self) -> String {
        self.join('-')
    }

    fn join(&self, sep: char) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError::Malformed {
            input: input.to_string(),
        };
        // Bare hex (`525400123456`) is common in inventories; macaddr does not
        // accept it, so decode it here.
        if input.len() == 12 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; 6];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&input[i * 2..i * 2 + 2], 16).map_err(|_| err())?;
            }
            return Mac::unicast(bytes, input);
        }
        // The colon and dash forms are what every boot request carries, so
        // they are decoded here without macaddr's general parser (a tenth of
        // a boot answer's own cost); one delimiter throughout, as macaddr.
        if input.len() == 17 {
            return Mac::unicast(decode_delimited(input.as_bytes()).ok_or_else(err)?, input);
        }
        // Only the dotted form (14 characters) is left to macaddr.
        if input.len() != 14 {
            return Err(err());
        }
        let parsed = macaddr::MacAddr6::from_str(input).map_err(|_| err())?;
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(parsed.as_bytes());
        Mac::unicast(bytes, input)
    }
}

/// `52:54:00:ab:cd:ef` or `52-54-00-ab-cd-ef` (17 bytes, either case), or
/// nothing when any pair is not hex or the delimiters differ.
fn decode_delimited(text: &[u8]) -> Option<[u8; 6]> {
    let delimiter = *text.get(2)?;
    if text.len() != 17 || (delimiter != b':' && delimiter != b'-') {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (i, byte) in bytes.iter_mut().enumerate() {
        let at = i * 3;
        if i > 0 && text[at - 1] != delimiter {
            return None;
        }
        *byte = (hex_value(text[at])? << 4) | hex_value(text[at + 1])?;
    }
    Some(bytes)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl Mac {
    fn unicast(bytes: [u8; 6], input: &str) -> Result<Mac, MacParseError> {
        if bytes[0] & 1 == 1 {
            return Err(MacParseError::Group {
                input: input.to_string(),
            });
        }
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(':'))
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_multicast_addresses_are_no_node() {
        for group in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "33-33-00-00-00-01",
            "0100.5e00.0001",
            "FFFFFFFFFFFF",
        ] {
            assert!(
                matches!(group.parse::<Mac>(), Err(MacParseError::Group { .. })),
                "{group}"
            );
        }
        assert!(
            "02:00:00:00:00:01".parse::<Mac>().is_ok(),
            "locally administered unicast"
        );
    }

    const EXPECTED: &str = "52:54:00:ab:cd:ef";

    #[test]
    fn accepts_every_common_form_in_any_case() {
        for form in [
            "52:54:00:ab:cd:ef",
            "52:54:00:AB:CD:EF",
            "52-54-00-ab-cd-ef",
            "52-54-00-Ab-Cd-Ef",
            "5254.00ab.cdef",
            "5254.00AB.CDEF",
            "525400abcdef",
            "525400ABCDEF",
        ] {
            let mac: Mac = form.parse().unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(mac.to_string(), EXPECTED, "{form}");
        }
    }

    #[test]
    fn rejects_malformed_input_quoting_it() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00:ab:cd:eg",
            "52:54-00:ab:cd:ef",
            " 52:54:00:ab:cd:ef",
            "52:54:00:ab:cd:ef\n",
            "525400abcde",
            "52 54 00 ab cd ef",
            "zz:zz:zz:zz:zz:zz",
            "5254.00ab.cdef.",
        ] {
            let err = bad.parse::<Mac>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    proptest::proptest! {
        /// The hand decoder of the colon and dash forms says what macaddr
        /// says, for any 17 characters near the valid shape.
        #[test]
        fn the_delimited_decoder_agrees_with_macaddr(
            bytes in proptest::array::uniform6(0u8..),
            dash in proptest::bool::ANY,
            upper in proptest::bool::ANY,
            damage in proptest::option::of((0usize..17, "[0-9a-fA-FgG:+. -]")),
        ) {
            let mac = Mac::new(bytes);
            let mut text = if dash { mac.hyphenated() } else { mac.to_string() };
            if upper {
                text = text.to_uppercase();
            }
            if let Some((at, with)) = damage {
                text.replace_range(at..at + 1, &with);
            }
            let reference = macaddr::MacAddr6::from_str(&text)
                .ok()
                .map(|parsed| {
                    let mut bytes = [0u8; 6];
                    bytes.copy_from_slice(parsed.as_bytes());
                    bytes
                });
            proptest::prop_assert_eq!(decode_delimited(text.as_bytes()), reference, "{}", text);
        }

        /// Any MAC printed in either delimited form reads back as itself.
        #[test]
        fn printed_forms_read_back(bytes in proptest::array::uniform6(0u8..)) {
            let mac = Mac::new(bytes);
            proptest::prop_assert_eq!(decode_delimited(mac.to_string().as_bytes()), Some(bytes));
            proptest::prop_assert_eq!(decode_delimited(mac.hyphenated().as_bytes()), Some(bytes));
            proptest::prop_assert_eq!(
                decode_delimited(mac.to_string().to_uppercase().as_bytes()),
                Some(bytes)
            );
        }
    }

    #[test]
    fn serialises_as_lower_case_colon_string() {
        let mac: Mac = "52-54-00-AB-CD-EF".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            format!("\"{EXPECTED}\"")
        );
        let back: Mac = serde_json::from_str("\"525400ABCDEF\"").unwrap();
        assert_eq!(back, mac);
        assert!(serde_json::from_str::<Mac>("[82,84,0,171,205,239]").is_err());
    }

    #[test]
    fn hyphenated_form() {
        let mac: Mac = EXPECTED.parse().unwrap();
        assert_eq!(mac.hyphenated(), "52-54-00-ab-cd-ef");
    }
}
