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
        let mut out = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.push_str(&format!("{b:02x}"));
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
        // Only the three delimited forms of exactly 17 (or 14 dotted)
        // characters; macaddr rejects mixed delimiters itself.
        if input.len() != 17 && input.len() != 14 {
            return Err(err());
        }
        let parsed = macaddr::MacAddr6::from_str(input).map_err(|_| err())?;
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(parsed.as_bytes());
        Mac::unicast(bytes, input)
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
