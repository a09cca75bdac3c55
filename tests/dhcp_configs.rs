//! The README's full-DHCP forms (issue 21) are read by the servers they
//! are for: the ISC dhcpd block by `dhcpd -t`, the Kea classes by
//! `kea-dhcp4 -t` (inside a minimal `Dhcp4` with one subnet). A form the
//! server refuses fails here, so the README cannot drift into one.
//! (The dnsmasq form boots OVMF in `tests/proxy_firmware.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::process::Command;

use common::require_tool;

/// The text of the first fenced block after `heading` in the README.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let after = &readme[readme.find(heading).expect("the heading in README.md")..];
    let open = after.find("```").expect("a fenced block");
    let body = &after[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_string()
}

fn check(program: &str, args: &[&str], config: &str) {
    let out = Command::new(require_tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} refused the README's form:\n{config}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readmes_isc_dhcpd_form_is_accepted_by_dhcpd() {
    let block = readme_block("**ISC dhcpd**");
    assert!(block.contains("HTTPClient") && block.contains("ipxe.efi"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dhcpd.conf");
    std::fs::write(&file, &block).unwrap();
    let leases = dir.path().join("dhcpd.leases");
    std::fs::write(&leases, "").unwrap();
    check(
        "dhcpd",
        &[
            "-t",
            "-cf",
            file.to_str().unwrap(),
            "-lf",
            leases.to_str().unwrap(),
        ],
        &block,
    );
    // The check can fail: a misspelt statement is refused.
    std::fs::write(&file, block.replace("filename", "filenme")).unwrap();
    let out = Command::new("dhcpd")
        .args(["-t", "-cf", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_readmes_kea_form_is_accepted_by_kea() {
    let block = readme_block("**Kea** (`Dhcp4`)");
    assert!(block.contains("HTTPClient") && block.contains("ipxe.efi"));
    let config = format!(
        "{{\"Dhcp4\": {{\"subnet4\": [{{\"id\": 1, \"subnet\": \"10.0.0.0/24\", \
         \"pools\": [{{\"pool\": \"10.0.0.100 - 10.0.0.200\"}}]}}],\n{block}}}}}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kea-dhcp4.json");
    std::fs::write(&file, &config).unwrap();
    check("kea-dhcp4", &["-t", file.to_str().unwrap()], &config);
    std::fs::write(&file, config.replace("== 'HTTPClient'", "=== 'HTTPClient'")).unwrap();
    let out = Command::new("kea-dhcp4")
        .args(["-t", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a broken test expression is refused");
}
