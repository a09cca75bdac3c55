use super::source::Source;
use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut source = Source::from_toml(toml, Path::new("test.toml"))?;
    source.apply_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    source.build()
}

#[test]
fn defaults_match_the_design() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.site_id, "default");
    assert_eq!(c.data_dir, PathBuf::from("./siteboot-data"));
    assert_eq!(c.tftp.listen.to_string(), "0.0.0.0:6969");
    assert_eq!(c.tftp.root, PathBuf::from("boot-assets"));
    assert_eq!(c.tftp.max_sessions, 1024);
    assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.http.public_url, None);
    assert_eq!(c.central.url, None);
    assert_eq!(c.central.boot_lookup_deadline, Duration::from_millis(300));
    assert_eq!(c.central.check_interval, Duration::from_secs(30));
    assert_eq!(c.central.failure_threshold, 3);
    assert_eq!(c.offline_default_action, OfflineDefault::Local);
    assert_eq!(c.queue.max_items, 100_000);
    assert_eq!(c.queue.retry_max, Duration::from_secs(300));
    assert_eq!(
        c.admin_token_file,
        PathBuf::from("./siteboot-data/admin.token")
    );
}

#[test]
fn a_data_dir_inside_a_served_root_is_refused_naming_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let toml = format!(
        "data_dir = \"{}\"\n[tftp]\nroot = \"{}\"\n",
        root.join("sub/../data").display(),
        root.display()
    );
    let e = load(&toml, &[]).unwrap_err().to_string();
    assert!(e.contains("`data_dir`") && e.contains("tftp.root"), "{e}");
    let e = load("data_dir = \"/usr/lib/ipxe/x\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("iPXE"), "{e}");
    let beside = format!(
        "data_dir = \"{}\"\n[tftp]\nroot = \"{}\"\n",
        dir.path().join("data").display(),
        root.display()
    );
    assert!(load(&beside, &[]).is_ok());
    // A root that is a prefix of the name, not a parent, is fine.
    let sibling = format!(
        "data_dir = \"{}-data\"\n[tftp]\nroot = \"{}\"\n",
        root.display(),
        root.display()
    );
    assert!(load(&sibling, &[]).is_ok());
}

#[test]
fn environment_overrides_file() {
    let c = load(
        "site_id = \"fra1\"\n[tftp]\nlisten = \":69\"\nmax_sessions = 10\n",
        &[
            ("SITEBOOT_TFTP_MAX_SESSIONS", "20"),
            ("SITEBOOT_SITE_ID", "ams2"),
            ("SITEBOOT_CENTRAL_BOOT_LOOKUP_DEADLINE", "250ms"),
            ("SITEBOOT_HTTP_PUBLIC_URL", "http://10.0.2.2:8080/"),
            ("SITEBOOT_LOG", "debug"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    assert_eq!(c.site_id, "ams2");
    assert_eq!(c.tftp.listen.to_string(), "0.0.0.0:69");
    assert_eq!(c.tftp.max_sessions, 20);
    assert_eq!(c.central.boot_lookup_deadline, Duration::from_millis(250));
    assert_eq!(c.http.public_url.as_deref(), Some("http://10.0.2.2:8080"));
}

#[test]
fn invalid_values_name_the_key_and_origin() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[tftp]\nmax_sessions = 0\n", &[], "tftp.max_sessions"),
        (
            "[tftp]\nmax_sessions = \"many\"\n",
            &[],
            "tftp.max_sessions",
        ),
        (
            "",
            &[("SITEBOOT_CENTRAL_CHECK_INTERVAL", "soon")],
            "central.check_interval",
        ),
        ("[http]\nlisten = \"nowhere\"\n", &[], "http.listen"),
        (
            "[offline]\ndefault_action = \"reinstall\"\n",
            &[],
            "offline.default_action",
        ),
        ("[central]\nurl = \"ftp://x\"\n", &[], "central.url"),
        ("site_id = \"a b\"\n", &[], "site_id"),
        ("[queue]\nretry_base = \"0s\"\n", &[], "queue.retry_base"),
    ];
    for (toml, env, key) in cases {
        let err = load(toml, env).expect_err(key).to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    let err = load("", &[("SITEBOOT_CENTRAL_CHECK_INTERVAL", "soon")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("SITEBOOT_CENTRAL_CHECK_INTERVAL"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    assert!(matches!(
        load("[tftp]\nlisen = \"x\"\n", &[]),
        Err(ConfigError::UnknownKey { .. })
    ));
    assert!(matches!(
        load("", &[("SITEBOOT_TFTP_LISEN", "x")]),
        Err(ConfigError::UnknownKey { .. })
    ));
    assert!(matches!(
        load("colour = 1\n", &[]),
        Err(ConfigError::UnknownKey { .. })
    ));
}

#[test]
fn workflows_are_read_and_checked() {
    let c = load(
        "[workflows.ubuntu]\nmethod = \"kernel\"\nkernel = \"ubuntu/vmlinuz\"\ninitrd = [\"ubuntu/initrd\"]\ncmdline = \"quiet\"\n",
        &[],
    )
    .unwrap();
    let wf = &c.workflows["ubuntu"];
    assert_eq!(wf.name, "ubuntu");
    assert_eq!(wf.initrd, vec!["ubuntu/initrd".to_string()]);
    assert!(!wf.offline_safe);
    let err = load("[workflows.bad]\nmethod = \"kernel\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("workflows.bad"), "{err}");
    let err = load("[workflows.bad]\nmethod = \"teleport\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("workflows.bad"), "{err}");
}

#[test]
fn syntax_errors_name_the_file() {
    let err = load("[tftp\n", &[]).unwrap_err().to_string();
    assert!(err.contains("test.toml"), "{err}");
}

#[test]
fn dhcp_keys_read_from_the_file_and_the_environment() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Off);
    assert!(c.dhcp.interfaces.is_empty());
    assert_eq!(
        (c.dhcp.port, c.dhcp.pxe_port, c.dhcp.client_port),
        (67, 4011, 68)
    );
    assert_eq!(c.dhcp.rate_per_mac, 4);
    assert!(!c.dhcp.known_only);

    let c = load(
        "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"eth0\", \"eth1\"]\n\
         server_address = \"10.0.0.5\"\nknown_only = true\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
    assert_eq!(c.dhcp.interfaces, ["eth0", "eth1"]);
    assert_eq!(
        c.dhcp.server_address,
        Some(std::net::Ipv4Addr::new(10, 0, 0, 5))
    );
    assert!(c.dhcp.known_only);

    let c = load("", &[("SITEBOOT_DHCP_INTERFACES", "eth0, br0")]).unwrap();
    assert_eq!(c.dhcp.interfaces, ["eth0", "br0"]);
    for (toml, key) in [
        ("[dhcp]\nmode = \"full\"\n", "dhcp.mode"),
        (
            "[dhcp]\nserver_address = \"boot.example\"\n",
            "dhcp.server_address",
        ),
        ("[dhcp]\ninterfaces = [1]\n", "dhcp.interfaces"),
    ] {
        let err = load(toml, &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn policy_pins_are_unset_by_default_read_when_set_and_refused_by_key() {
    use crate::model::policy::{Autonomy, CachePolicy, ConflictStrategy, LocalPins};
    assert_eq!(load("", &[]).unwrap().policy_pins, LocalPins::default());
    let c = load(
        "[site]\nautonomy = \"readonly\"\n[cache]\npolicy = \"pattern\"\n\
         patterns = [\"ubuntu/*\"]\nretention = \"7d\"\n[conflicts]\nsite_policy = \"last_write\"\n",
        &[("SITEBOOT_SITE_AUTONOMY", "limited")],
    )
    .unwrap();
    assert_eq!(c.policy_pins.autonomy, Some(Autonomy::Limited), "env wins");
    assert_eq!(c.policy_pins.cache_policy, Some(CachePolicy::Pattern));
    assert_eq!(c.policy_pins.cache_patterns, Some(vec!["ubuntu/*".into()]));
    assert_eq!(
        c.policy_pins.cache_retention,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        c.policy_pins.conflict_strategy,
        Some(ConflictStrategy::LastWrite)
    );
    for (toml, key) in [
        ("[site]\nautonomy = \"sovereign\"\n", "site.autonomy"),
        ("[cache]\npolicy = \"everything\"\n", "cache.policy"),
        (
            "[conflicts]\nsite_policy = \"local_wins\"\n",
            "conflicts.site_policy",
        ),
        (
            "[conflicts]\nmissing_local = \"last_write\"\n",
            "conflicts.missing_local",
        ),
    ] {
        let e = load(toml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    // last_write per kind: for state mismatches only.
    let c = load("[conflicts]\nstate_mismatch = \"last_write\"\n", &[]).unwrap();
    assert_eq!(c.conflicts.state_mismatch, Policy::LastWrite);
}
