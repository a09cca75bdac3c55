//! Property tests for every parser that faces the network (DESIGN §10):
//! the TFTP packet parser and option negotiation, the path sanitiser, the
//! MAC parser, `Range`, and the installer report. For each: it never
//! panics on any input, never accepts what DESIGN §10 refuses, and what
//! it accepts round-trips.

use std::time::Duration;

use crate::central::api::{NodeReport, REPORT_EVENTS};
use crate::model::mac::Mac;
use crate::serve::fsroot::sanitise;
use crate::serve::http::assets::{RangeRequest, parse_range};
use crate::serve::tftp::packet::{self, ErrorCode, Packet};
use crate::serve::tftp::session::{Limits, negotiate};
use proptest::prelude::*;

/// Text without NUL (TFTP strings are NUL-terminated).
fn tftp_text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

/// Path-like text drawn from the characters that matter to the sanitiser.
fn path_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("%"),
            Just("%2e"),
            Just("?"),
            Just("#"),
            Just(";"),
            Just(" "),
            Just("\\"),
            Just("\u{0}"),
            Just("\n"),
            Just("\u{7f}"),
            Just("C:"),
            Just("a"),
            Just("boot"),
            Just("é"),
            Just("x.efi"),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn tftp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = Packet::parse(&bytes);
    }

    #[test]
    fn tftp_requests_round_trip(
        filename in "[^\u{0}]{1,60}",
        mode in prop_oneof![Just("octet"), Just("OCTET"), Just("netascii")],
        options in proptest::collection::vec((tftp_text(), tftp_text()), 0..8),
    ) {
        let pairs: Vec<(&str, &str)> = options.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let mut wire = packet::read_request(&filename, &pairs).to_vec();
        // read_request writes octet; put the generated mode in its place.
        let mode_at = 2 + filename.len() + 1;
        wire.splice(mode_at..mode_at + "octet".len(), mode.bytes());
        let parsed = Packet::parse(&wire);
        // Trailing empty option fields are padding some clients send; the
        // parser drops them, so an empty last pair reads back shorter.
        let mut expected: Vec<(String, String)> = options
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let mut flat: Vec<String> = expected.iter().flat_map(|(n, v)| [n.clone(), v.clone()]).collect();
        while flat.last().is_some_and(String::is_empty) {
            flat.pop();
        }
        if flat.len() % 2 == 1 {
            prop_assert!(parsed.is_err(), "an option without a value is refused");
            return Ok(());
        }
        expected.truncate(flat.len() / 2);
        match parsed {
            Ok(Packet::ReadRequest(request)) => {
                prop_assert_eq!(&request.filename, &filename);
                prop_assert_eq!(request.mode, mode.to_ascii_lowercase());
                prop_assert_eq!(request.options, expected);
                prop_assert_eq!(request.wire_len, wire.len());
            }
            other => prop_assert!(false, "not a read request: {:?}", other),
        }
    }

    #[test]
    fn tftp_data_ack_and_oack_round_trip(
        block in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        options in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{1,6}"), 0..6),
    ) {
        prop_assert_eq!(
            Packet::parse(&packet::data(block, &payload)).ok(),
            Some(Packet::Data { block, payload: payload.clone().into() })
        );
        prop_assert_eq!(Packet::parse(&packet::ack(block)).ok(), Some(Packet::Ack { block }));
        prop_assert_eq!(
            Packet::parse(&packet::option_ack(&options)).ok(),
            Some(Packet::OptionAck { options: options.clone() })
        );
    }

    #[test]
    fn an_error_reply_is_never_larger_than_its_request(
        message in ".{0,300}",
        limit in 0usize..600,
    ) {
        let reply = packet::error_within(ErrorCode::FileNotFound, &message, limit);
        // 5 bytes is the smallest ERROR packet there is.
        prop_assert!(reply.len() <= limit.max(5), "{} > {}", reply.len(), limit);
        let is_error_1 = matches!(Packet::parse(&reply), Ok(Packet::Error { code: 1, .. }));
        prop_assert!(is_error_1, "the reply is an ERROR 1");
    }

    #[test]
    fn negotiation_keeps_to_the_limits(
        options in proptest::collection::vec(
            (
                prop_oneof![Just("blksize"), Just("tsize"), Just("timeout"), Just("windowsize"), Just("x")],
                prop_oneof!["[0-9]{1,6}".prop_map(|s| s), Just(" 8".to_string()), Just("-1".to_string()), Just("+9".to_string()), ".{0,8}"],
            ),
            0..40,
        ),
        file_size in any::<u64>(),
    ) {
        let options: Vec<(String, String)> = options.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        let limits = Limits::default();
        let n = negotiate(&options, file_size, &limits);
        let mut names: Vec<&str> = n.acknowledged.iter().map(|(name, _)| name.as_str()).collect();
        let acknowledged = names.len();
        names.sort_unstable();
        names.dedup();
        prop_assert_eq!(names.len(), acknowledged, "each option acknowledged once");
        for (name, _) in &n.acknowledged {
            prop_assert!(options.iter().any(|(asked, _)| asked == name), "{} was asked for", name);
        }
        prop_assert!((8..=limits.max_blksize).contains(&n.blksize) || n.blksize == 512);
        prop_assert!(n.timeout <= limits.max_timeout);
        prop_assert!(n.timeout >= Duration::from_secs(1));
        prop_assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize);
        prop_assert!(n.windowsize == 1 || n.windowsize * n.blksize <= limits.max_window_bytes);
    }

    #[test]
    fn the_path_sanitiser_refuses_what_design_10_refuses(path in path_text()) {
        match sanitise(&path) {
            Ok(clean) => {
                let text = clean.to_str().expect("accepted paths are UTF-8");
                // It is the request, minus leading slashes, unchanged.
                prop_assert_eq!(text, path.trim_start_matches('/'));
                for segment in text.split('/') {
                    prop_assert!(!segment.is_empty() && !segment.chars().all(|c| matches!(c, '.' | ' ')));
                    prop_assert!(!segment.chars().any(|c| matches!(c, '%' | '?' | '#' | ';' | '\\') || c.is_control()));
                }
                prop_assert!(clean.is_relative());
            }
            Err(_) => {
                let trimmed = path.trim_start_matches('/');
                let refusable = trimmed.is_empty()
                    || trimmed.as_bytes().get(1) == Some(&b':')
                    || trimmed.split('/').any(|s| {
                        // Dots with trailing dots or spaces (`...`, `.. `)
                        // and `;` path parameters too (issue 19 item 13).
                        s.is_empty() || s.chars().all(|c| matches!(c, '.' | ' '))
                            || s.chars().any(|c| matches!(c, '%' | '?' | '#' | ';' | '\\') || c.is_control())
                    });
                prop_assert!(refusable, "{:?} was refused without cause", path);
            }
        }
    }

    #[test]
    fn the_mac_parser_never_panics_and_round_trips(text in ".{0,20}") {
        if let Ok(mac) = text.parse::<Mac>() {
            let shown = mac.to_string();
            prop_assert_eq!(shown.parse::<Mac>().ok(), Some(mac));
            prop_assert_eq!(mac.bytes()[0] & 1, 0, "group MACs are refused");
        }
    }

    #[test]
    fn every_spelling_of_a_unicast_mac_parses_to_it(mut bytes in any::<[u8; 6]>(), upper in any::<bool>()) {
        bytes[0] &= 0xfe;
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let spellings = [
            hex.join(":"),
            hex.join("-"),
            format!("{}{}.{}{}.{}{}", hex[0], hex[1], hex[2], hex[3], hex[4], hex[5]),
            hex.concat(),
        ];
        for spelling in spellings {
            let spelling = if upper { spelling.to_uppercase() } else { spelling };
            let mac: Mac = spelling.parse().map_err(|e| TestCaseError::fail(format!("{spelling}: {e}")))?;
            prop_assert_eq!(mac.bytes(), bytes);
            prop_assert_eq!(mac.to_string(), hex.join(":"));
        }
        let mut group = bytes;
        group[0] |= 1;
        let hex: Vec<String> = group.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert!(hex.join(":").parse::<Mac>().is_err());
    }

    #[test]
    fn range_parsing_never_panics_and_stays_in_the_file(header in ".{0,40}", len in 0u64..10_000) {
        match parse_range(Some(&header), len) {
            RangeRequest::Partial { start, end } => {
                prop_assert!(start <= end && end < len);
                prop_assert!(!header.contains('+') && !header.contains(','));
            }
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }

    #[test]
    fn well_formed_ranges_are_honoured(start in 0u64..20_000, width in 0u64..20_000, len in 1u64..10_000) {
        let end = start + width;
        let got = parse_range(Some(&format!("bytes={start}-{end}")), len);
        if start < len {
            prop_assert_eq!(got, RangeRequest::Partial { start, end: end.min(len - 1) });
        } else {
            prop_assert_eq!(got, RangeRequest::Unsatisfiable);
        }
        let suffix = parse_range(Some(&format!("bytes=-{width}")), len);
        if width == 0 {
            prop_assert_ne!(suffix, RangeRequest::Full);
        } else {
            prop_assert_eq!(suffix, RangeRequest::Partial { start: len - width.min(len), end: len - 1 });
        }
        prop_assert_eq!(parse_range(Some(&format!("bytes=+{start}-{end}")), len), RangeRequest::Full);
    }

    #[test]
    fn installer_reports_are_checked_and_round_trip(
        mac in prop_oneof!["[0-9a-f]{2}(:[0-9a-f]{2}){5}", ".{0,20}"],
        event in prop_oneof![Just(None), proptest::sample::select(REPORT_EVENTS.to_vec()).prop_map(|e| Some(e.to_string())), ".{0,12}".prop_map(Some)],
        message in proptest::option::of(".{0,40}"),
        extra in proptest::collection::btree_map("[a-z_]{1,8}", any::<i64>(), 0..4),
    ) {
        let mut body = serde_json::json!({"mac_address": mac, "event": event, "message": message});
        for (key, value) in &extra {
            if body.get(key).is_none() {
                body[key] = (*value).into();
            }
        }
        let text = body.to_string();
        let report = match serde_json::from_str::<NodeReport>(&text) {
            Ok(report) => report,
            // Only an extra field that lands on a typed field of the
            // report (a number where text belongs) may make it unreadable.
            Err(e) => {
                const TEXT_FIELDS: [&str; 3] = ["status", "installation_status", "message"];
                prop_assert!(
                    extra.keys().any(|k| TEXT_FIELDS.contains(&k.as_str())),
                    "a well-formed report did not decode ({e}): {text}"
                );
                return Ok(());
            }
        };
        if let Ok(parsed_mac) = report.validate() {
            prop_assert_eq!(Some(parsed_mac), mac.parse::<Mac>().ok());
            prop_assert!(REPORT_EVENTS.contains(&report.effective_event().unwrap_or("")));
            let again: NodeReport = serde_json::from_str(&serde_json::to_string(&report).expect("encode"))
                .expect("decode");
            prop_assert_eq!(again, report);
        }
    }

    #[test]
    fn report_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(report) = serde_json::from_slice::<NodeReport>(&bytes) {
            let _ = report.validate();
        }
    }
}
