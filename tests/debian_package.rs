//! The Debian package (issue 13): `cargo deb` builds
//! `siteboot_<version>_amd64.deb`; it installs with apt on this machine,
//! its unit passes `systemd-analyze verify` (and `security`: exposure at
//! most 1.6), its production config passes
//! `siteboot check-config`, and it is removed (and purged) cleanly. The
//! test changes the machine (root, as CI runs): it removes the package
//! again however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::require_tool;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the package at the end, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("apt-get", &["purge", "-y", "-qq", "siteboot"]);
    }
}

fn build_package() -> PathBuf {
    require_tool("cargo-deb");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target directory: the test runner's build lock is not ours.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb-build");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
    let _ = std::fs::remove_dir_all(&out_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--output"])
        .arg(&out_dir)
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(&out_dir)
        .expect("deb output")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.as_deref().is_some_and(
            |n| n.starts_with(&format!("siteboot_{version}")) && n.ends_with("_amd64.deb")
        ),
        "{name:?}"
    );
    deb
}

#[test]
fn the_debian_package_installs_verifies_and_removes_cleanly() {
    let deb = build_package();
    let deb_path = deb.to_string_lossy().into_owned();

    // What the package holds and declares.
    let fields = ok("dpkg-deb", &["--field", &deb_path, "Depends", "Package"]);
    assert!(fields.contains("ipxe"), "Depends: ipxe: {fields}");
    let contents = ok("dpkg-deb", &["--contents", &deb_path]);
    for path in [
        "./usr/bin/siteboot",
        "./etc/siteboot/siteboot.toml",
        "./usr/lib/sysusers.d/siteboot.conf",
        "./usr/share/siteboot/templates/install.ipxe.j2",
        "siteboot.service",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    assert!(
        !contents.contains("undionly.kpxe") && !contents.contains("ipxe.efi"),
        "bootloaders come from Debian's ipxe, never from this package"
    );
    let control = ok("dpkg-deb", &["--info", &deb_path]);
    assert!(control.contains("conffiles"), "{control}");

    let installed = Installed;
    let local = format!(
        "./{}",
        deb.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let out = Command::new("apt-get")
        .current_dir(deb.parent().expect("deb dir"))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", &local])
        .output()
        .expect("apt-get install");
    assert!(
        out.status.success(),
        "apt-get install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = [
        "/lib/systemd/system/siteboot.service",
        "/usr/lib/systemd/system/siteboot.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit installed");
    require_tool("systemd-analyze");
    ok("systemd-analyze", &["verify", unit]);
    // The sandbox is no weaker for ProxyDHCP (issue 21): exposure at most
    // 1.6, as before it; and it allows what ProxyDHCP needs.
    let security = run("systemd-analyze", &["security", "--offline=true", unit]);
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for siteboot.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 1.6, "exposure {exposure}:\n{report}");
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(
        text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE\n") && text.contains("AF_NETLINK"),
        "{text}"
    );
    let checked = ok(
        "/usr/bin/siteboot",
        &["check-config", "--config", "/etc/siteboot/siteboot.toml"],
    );
    assert!(checked.contains("configuration OK"), "{checked}");
    assert!(
        ok("id", &["siteboot"]).contains("siteboot"),
        "the agent's user"
    );
    let conffiles =
        std::fs::read_to_string("/var/lib/dpkg/info/siteboot.conffiles").unwrap_or_default();
    assert!(
        conffiles.contains("/etc/siteboot/siteboot.toml"),
        "{conffiles}"
    );

    ok("apt-get", &["remove", "-y", "-qq", "siteboot"]);
    assert!(!Path::new("/usr/bin/siteboot").exists(), "binary removed");
    assert!(
        Path::new("/etc/siteboot/siteboot.toml").exists(),
        "remove keeps the conffile"
    );
    ok("apt-get", &["purge", "-y", "-qq", "siteboot"]);
    assert!(
        !Path::new("/etc/siteboot/siteboot.toml").exists(),
        "purge removes it"
    );
    let status = run("dpkg-query", &["-W", "-f", "${Status}", "siteboot"]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("install ok installed"),
        "still installed"
    );
    drop(installed);
}
