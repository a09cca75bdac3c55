//! A rendered script as an artifact: its format, its bytes (kept once and
//! shared by every answer that sends them: the HTTP body, a TFTP file, the
//! rendered-script cache) and their digest, computed when first asked.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// The language a script is written in; the client decides which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScriptFormat {
    /// An iPXE script (`#!ipxe`).
    #[default]
    Ipxe,
    /// A GRUB configuration, for the Secure Boot chain (shim → GRUB,
    /// DESIGN §14).
    Grub,
}

impl ScriptFormat {
    /// The format's name (`?format=` and the status line).
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptFormat::Ipxe => "ipxe",
            ScriptFormat::Grub => "grub",
        }
    }

    /// The format named `name` (`?format=`), if it is one.
    pub fn parse(name: &str) -> Option<ScriptFormat> {
        match name {
            "ipxe" => Some(ScriptFormat::Ipxe),
            "grub" => Some(ScriptFormat::Grub),
            _ => None,
        }
    }
}

/// A rendered script; cloning it shares its bytes.
#[derive(Clone)]
pub struct Script(Arc<Rendered>);

struct Rendered {
    format: ScriptFormat,
    /// The text; `bytes` shares its allocation.
    text: Arc<str>,
    bytes: Bytes,
    sha256: OnceLock<String>,
}

/// Lets `Bytes` own the text's allocation (no copy).
struct TextBytes(Arc<str>);

impl AsRef<[u8]> for TextBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Script {
    /// A script of `format` with this text.
    pub fn new(format: ScriptFormat, text: String) -> Script {
        let text: Arc<str> = Arc::from(text);
        Script(Arc::new(Rendered {
            format,
            bytes: Bytes::from_owner(TextBytes(text.clone())),
            text,
            sha256: OnceLock::new(),
        }))
    }

    /// An iPXE script.
    pub fn ipxe(text: String) -> Script {
        Script::new(ScriptFormat::Ipxe, text)
    }

    /// The script's format.
    pub fn format(&self) -> ScriptFormat {
        self.0.format
    }

    /// The bytes to send (a cheap, shared handle).
    pub fn bytes(&self) -> Bytes {
        self.0.bytes.clone()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }

    /// The script's text.
    pub fn text(&self) -> &str {
        &self.0.text
    }

    /// The SHA-256 of the bytes, lowercase hex.
    pub fn sha256_hex(&self) -> &str {
        self.0.sha256.get_or_init(|| {
            use sha2::Digest;
            sha2::Sha256::digest(&self.0.bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }
}

impl std::ops::Deref for Script {
    type Target = str;

    fn deref(&self) -> &str {
        self.text()
    }
}

impl std::fmt::Display for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("format", &self.0.format)
            .field("text", &self.text())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_keeps_its_bytes_once_and_knows_their_digest() {
        let script = Script::ipxe("#!ipxe\nexit\n".into());
        let copy = script.clone();
        assert_eq!(script.bytes().as_ptr(), copy.bytes().as_ptr(), "shared");
        assert_eq!(
            script.bytes().as_ptr(),
            copy.text().as_ptr(),
            "one allocation"
        );
        assert_eq!(copy.format(), ScriptFormat::Ipxe);
        assert!(copy.contains("exit"));
        assert_eq!(
            script.sha256_hex(),
            "b47e81073cc93222f98c0e29ca161286fe796b064e7506d18def21a41d3f2cf1"
        );
    }
}
