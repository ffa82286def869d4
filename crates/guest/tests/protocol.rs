//! The agent protocol's decoder against arbitrary input: no byte sequence
//! makes it panic or allocate past the frame limit, and every message
//! survives a round trip through a frame.

use proptest::prelude::*;
use vws_guest::{read_frame, write_frame, FromAgent, ToAgent, MAX_FRAME};

fn to_agent() -> impl Strategy<Value = ToAgent> {
    let s = "\\PC{0,40}";
    prop_oneof![
        Just(ToAgent::Ping),
        (
            s,
            proptest::collection::vec(s, 0..4),
            proptest::option::of(s),
            proptest::option::of(0u64..1_000_000)
        )
            .prop_map(|(job, argv, cwd, timeout_ms)| ToAgent::Exec {
                job,
                argv,
                env: vec![],
                cwd,
                stdin: None,
                timeout_ms,
                user: None,
            }),
        (s, any::<i32>()).prop_map(|(job, signal)| ToAgent::Signal { job, signal }),
        (
            s,
            s,
            "[A-Za-z0-9+/]{0,40}",
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(req, path, data, mode)| ToAgent::WriteFile {
                req,
                path,
                data,
                mode
            }),
        (s, s).prop_map(|(req, path)| ToAgent::ReadFile { req, path }),
        (s, proptest::option::of(s), "[A-Za-z0-9+/]{0,40}").prop_map(|(hostname, mac, seed)| {
            ToAgent::Identity {
                hostname,
                mac,
                seed,
                net: vec![vws_guest::NetConfig {
                    dev: "eth0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    address: Some("10.0.0.2/24".into()),
                    gateway: None,
                    dhcp: false,
                }],
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut r = &bytes[..];
        // Whatever comes out, it is an answer, not a crash.
        for _ in 0..4 {
            match read_frame::<ToAgent>(&mut r) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        let mut r = &bytes[..];
        let _ = read_frame::<FromAgent>(&mut r);
    }

    #[test]
    fn a_declared_length_past_the_limit_is_refused(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(b"{}");
        let err = read_frame::<ToAgent>(&mut &frame[..]).unwrap_err();
        prop_assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn messages_round_trip(msg in to_agent()) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let back: Option<ToAgent> = read_frame(&mut &buf[..]).unwrap();
        prop_assert_eq!(back, Some(msg));
    }

    #[test]
    fn truncated_frames_are_errors(msg in to_agent(), cut in 1usize..64) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let keep = buf.len().saturating_sub(cut).max(1);
        let r = read_frame::<ToAgent>(&mut &buf[..keep]);
        prop_assert!(!matches!(r, Ok(Some(_))), "a cut frame never decodes");
    }
}
