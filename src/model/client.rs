//! Who is asking for a boot, one notion for every path a request takes:
//! a DHCP packet (options 93, 60, 77, 175, 97), iPXE's query string
//! (`arch`, `platform`, `uuid`), or a UEFI HTTP Boot request. And the one
//! table from firmware to boot file (DESIGN §13, §14).

use super::boot::BootFacts;
use super::mac::Mac;

/// The client's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (PXE from an option ROM).
    Bios,
    /// UEFI.
    Uefi,
    /// Not said.
    Unknown,
}

/// The client's processor architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// 32-bit x86 (BIOS machines and IA32 UEFI).
    X86,
    /// 64-bit x86.
    X86_64,
    /// 32-bit ARM.
    Arm32,
    /// 64-bit ARM (AArch64).
    Arm64,
    /// Anything else (Itanium, POWER, RISC-V, …): no boot file here.
    Other,
}

impl Cpu {
    /// From an architecture's name as iPXE (`${buildarch}`), Debian or a
    /// controller spell it.
    pub fn from_name(name: &str) -> Cpu {
        match name.to_ascii_lowercase().as_str() {
            "i386" | "i686" | "x86" => Cpu::X86,
            "x86_64" | "x86-64" | "amd64" => Cpu::X86_64,
            "arm64" | "aarch64" => Cpu::Arm64,
            "arm32" | "arm" | "armhf" => Cpu::Arm32,
            _ => Cpu::Other,
        }
    }
}

/// How the firmware fetches its first file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// PXE: a file name, over TFTP.
    Tftp,
    /// UEFI HTTP Boot: a URL.
    Http,
}

/// A client asking for a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's MAC, when the request names one.
    pub mac: Option<Mac>,
    /// The machine's UUID (DHCP option 97, iPXE's `${uuid}`).
    pub uuid: Option<String>,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// The processor architecture.
    pub cpu: Cpu,
    /// How it fetches its boot file.
    pub fetch: Fetch,
    /// iPXE is already running (option 77 `iPXE`, option 175, or a
    /// request from an iPXE script).
    pub ipxe: bool,
}

/// Option 60's class prefixes (PXE spec; UEFI 2.5 for HTTP Boot).
pub const CLASS_PXE: &str = "PXEClient";
/// Option 60's class prefix of a UEFI HTTP Boot client.
pub const CLASS_HTTP: &str = "HTTPClient";

impl Client {
    /// From a DHCP request: `arch` is option 93's first value (RFC 4578,
    /// IANA "Processor Architecture Types"), `class` option 60,
    /// `user_class` option 77's raw bytes, `ipxe_options` whether option
    /// 175 (iPXE's encapsulated options) is present, `uuid` option 97.
    pub fn from_dhcp(
        mac: Option<Mac>,
        arch: Option<u16>,
        class: Option<&str>,
        user_class: Option<&[u8]>,
        ipxe_options: bool,
        uuid: Option<String>,
    ) -> Client {
        let (firmware, cpu, http_arch) = match arch {
            Some(0) => (Firmware::Bios, Cpu::X86, false),
            Some(6) => (Firmware::Uefi, Cpu::X86, false),
            // 9 is EFI Byte Code, which many x64 firmwares send instead of 7.
            Some(7 | 9) => (Firmware::Uefi, Cpu::X86_64, false),
            Some(10) => (Firmware::Uefi, Cpu::Arm32, false),
            Some(11) => (Firmware::Uefi, Cpu::Arm64, false),
            Some(15) => (Firmware::Uefi, Cpu::X86, true),
            Some(16 | 17) => (Firmware::Uefi, Cpu::X86_64, true),
            Some(18) => (Firmware::Uefi, Cpu::Arm32, true),
            Some(19) => (Firmware::Uefi, Cpu::Arm64, true),
            Some(_) => (Firmware::Unknown, Cpu::Other, false),
            None => (Firmware::Unknown, Cpu::Other, false),
        };
        let http_class = class.is_some_and(|c| c.starts_with(CLASS_HTTP));
        Client {
            mac,
            uuid,
            firmware,
            cpu,
            fetch: if http_arch || http_class {
                Fetch::Http
            } else {
                Fetch::Tftp
            },
            ipxe: ipxe_options || user_class_is_ipxe(user_class),
        }
    }

    /// From iPXE's query string (`${buildarch}`/`${arch}`, `${platform}`,
    /// `${uuid}`): iPXE is running, and fetches over HTTP.
    pub fn from_ipxe(mac: Mac, facts: &BootFacts) -> Client {
        let cpu = facts.arch.as_deref().map_or(Cpu::Other, Cpu::from_name);
        let firmware = match facts
            .platform
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("pcbios" | "bios") => Firmware::Bios,
            Some("efi" | "uefi") => Firmware::Uefi,
            _ => Firmware::Unknown,
        };
        // iPXE on a BIOS x86-64 machine says i386 (it runs in 32-bit mode).
        let cpu = match (firmware, cpu) {
            (Firmware::Bios, Cpu::Other) => Cpu::X86,
            (_, cpu) => cpu,
        };
        Client {
            mac: Some(mac),
            uuid: facts.uuid.clone(),
            firmware,
            cpu,
            fetch: Fetch::Http,
            ipxe: true,
        }
    }

    /// From a UEFI HTTP Boot firmware's own request for its loader (its
    /// `User-Agent` is `UefiHttpBoot/…`); the MAC is not in the request.
    pub fn from_http_boot(user_agent: Option<&str>) -> Option<Client> {
        user_agent
            .is_some_and(|ua| ua.starts_with("UefiHttpBoot"))
            .then_some(Client {
                mac: None,
                uuid: None,
                firmware: Firmware::Uefi,
                cpu: Cpu::Other,
                fetch: Fetch::Http,
                ipxe: false,
            })
    }
}

/// Option 77 (RFC 3004) is a list of length-prefixed classes; iPXE sends
/// one, `iPXE`, and some builds send the bare string.
fn user_class_is_ipxe(user_class: Option<&[u8]>) -> bool {
    let Some(bytes) = user_class else {
        return false;
    };
    if bytes == b"iPXE" {
        return true;
    }
    let mut rest = bytes;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// What a UEFI x64 client gets as its first loader (DESIGN §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UefiLoader {
    /// Debian's `ipxe.efi` (not signed for Secure Boot).
    Ipxe,
    /// Debian's signed shim → GRUB chain.
    Shim,
}

impl UefiLoader {
    /// A node's own choice, from its tags (`loader:shim`, `loader:ipxe`);
    /// the last such tag wins. None: the node has none.
    pub fn from_tags(tags: &[String]) -> Option<UefiLoader> {
        tags.iter().rev().find_map(|tag| match tag.trim() {
            "loader:shim" => Some(UefiLoader::Shim),
            "loader:ipxe" => Some(UefiLoader::Ipxe),
            _ => None,
        })
    }
}

/// The first file a client is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFile {
    /// iPXE is running: the agent's bootstrap script, by URL (`/boot.ipxe`).
    Bootstrap,
    /// A file by name: over TFTP, or for an HTTP Boot client under
    /// `/assets/` at the agent's URL.
    Named(&'static str),
}

/// The one table from firmware to boot file. None: no file for this
/// architecture (the request is not answered).
pub fn boot_file(client: &Client, loader: UefiLoader) -> Option<BootFile> {
    if client.ipxe {
        return Some(BootFile::Bootstrap);
    }
    let name = match (client.firmware, client.cpu, client.fetch) {
        (Firmware::Bios, Cpu::X86 | Cpu::X86_64, Fetch::Tftp) => "undionly.kpxe",
        (Firmware::Uefi, Cpu::X86_64, Fetch::Tftp) => match loader {
            UefiLoader::Ipxe => "ipxe.efi",
            UefiLoader::Shim => "shimx64.efi",
        },
        // HTTP Boot fetches iPXE itself; shim over HTTP Boot would need
        // GRUB's HTTP module and a configuration path (not offered).
        (Firmware::Uefi, Cpu::X86_64, Fetch::Http) => "ipxe.efi",
        (Firmware::Uefi, Cpu::Arm64, _) => "ipxe-arm64.efi",
        _ => return None,
    };
    Some(BootFile::Named(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(arch: u16, class: &str) -> Client {
        Client::from_dhcp(None, Some(arch), Some(class), None, false, None)
    }

    #[test]
    fn option_93_and_60_name_the_firmware() {
        let bios = dhcp(0, "PXEClient:Arch:00000:UNDI:002001");
        assert_eq!(
            (bios.firmware, bios.cpu, bios.fetch),
            (Firmware::Bios, Cpu::X86, Fetch::Tftp)
        );
        let uefi = dhcp(7, "PXEClient:Arch:00007:UNDI:003016");
        assert_eq!(
            (uefi.firmware, uefi.cpu, uefi.fetch),
            (Firmware::Uefi, Cpu::X86_64, Fetch::Tftp)
        );
        assert_eq!(
            dhcp(9, "PXEClient").cpu,
            Cpu::X86_64,
            "EBC is x64 in practice"
        );
        // OVMF's HTTP Boot DISCOVER (measured): option 60 and arch 16.
        let http = dhcp(16, "HTTPClient:Arch:00016:UNDI:003000");
        assert_eq!((http.cpu, http.fetch), (Cpu::X86_64, Fetch::Http));
        assert_eq!(dhcp(19, "HTTPClient").cpu, Cpu::Arm64);
        assert_eq!(dhcp(2, "PXEClient").cpu, Cpu::Other);
    }

    #[test]
    fn ipxe_is_known_by_option_77_or_175() {
        let by_class = Client::from_dhcp(None, Some(0), None, Some(b"\x04iPXE"), false, None);
        assert!(by_class.ipxe);
        assert!(Client::from_dhcp(None, Some(0), None, Some(b"iPXE"), false, None).ipxe);
        assert!(Client::from_dhcp(None, Some(7), None, None, true, None).ipxe);
        assert!(!Client::from_dhcp(None, Some(7), None, Some(b"\x05other"), false, None).ipxe);
        assert!(!Client::from_dhcp(None, Some(7), None, Some(b"\x09iPXE"), false, None).ipxe);
    }

    #[test]
    fn the_table_gives_each_firmware_its_file() {
        let file = |c: &Client| boot_file(c, UefiLoader::Ipxe);
        assert_eq!(
            file(&dhcp(0, "PXEClient")),
            Some(BootFile::Named("undionly.kpxe"))
        );
        assert_eq!(
            file(&dhcp(7, "PXEClient")),
            Some(BootFile::Named("ipxe.efi"))
        );
        assert_eq!(
            boot_file(&dhcp(7, "PXEClient"), UefiLoader::Shim),
            Some(BootFile::Named("shimx64.efi"))
        );
        assert_eq!(
            file(&dhcp(16, "HTTPClient")),
            Some(BootFile::Named("ipxe.efi"))
        );
        assert_eq!(
            file(&dhcp(11, "PXEClient")),
            Some(BootFile::Named("ipxe-arm64.efi"))
        );
        assert_eq!(file(&dhcp(6, "PXEClient")), None, "no IA32 UEFI loader");
        assert_eq!(file(&dhcp(2, "PXEClient")), None);
        let ipxe = Client::from_dhcp(None, Some(7), None, Some(b"\x04iPXE"), false, None);
        assert_eq!(file(&ipxe), Some(BootFile::Bootstrap), "no chainload loop");
    }

    #[test]
    fn ipxe_queries_and_http_boot_requests_are_clients_too() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let facts = BootFacts {
            arch: Some("i386".into()),
            platform: Some("pcbios".into()),
            uuid: Some("u-1".into()),
            ..BootFacts::default()
        };
        let client = Client::from_ipxe(mac, &facts);
        assert_eq!(
            (client.firmware, client.cpu, client.ipxe),
            (Firmware::Bios, Cpu::X86, true)
        );
        assert_eq!(client.uuid.as_deref(), Some("u-1"));
        let efi = BootFacts {
            arch: Some("x86_64".into()),
            platform: Some("efi".into()),
            ..BootFacts::default()
        };
        assert_eq!(Client::from_ipxe(mac, &efi).firmware, Firmware::Uefi);
        assert!(Client::from_http_boot(Some("UefiHttpBoot/1.0")).is_some());
        assert!(Client::from_http_boot(Some("curl/8")).is_none());
    }

    #[test]
    fn a_nodes_loader_tag_overrides_the_configuration() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(UefiLoader::from_tags(&tags(&["rack1"])), None);
        assert_eq!(
            UefiLoader::from_tags(&tags(&["loader:shim"])),
            Some(UefiLoader::Shim)
        );
        assert_eq!(
            UefiLoader::from_tags(&tags(&["loader:shim", "loader:ipxe"])),
            Some(UefiLoader::Ipxe),
            "the last one wins"
        );
    }
}
