//! Unit tests of the flag values and the checks `Config::new` makes.

use super::*;

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64K"), Ok(65536));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("8MiB"), Ok(8 << 20));
    assert_eq!(parse_size("8 mb"), Ok(8 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert!(parse_size("").is_err());
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("12parsecs").is_err());
    assert!(parse_size("99999999999999999999").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("16EiB").is_err());
}

#[test]
fn seconds_are_finite_and_at_most_a_year() {
    assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
    assert_eq!(
        parse_seconds("31536000"),
        Ok(Duration::from_secs(31_536_000))
    );
    for bad in [
        "inf",
        "-inf",
        "nan",
        "-1",
        "1e19",
        "1e300",
        "18446744073709551615",
        "31536001",
        "soon",
    ] {
        assert!(parse_seconds(bad).is_err(), "{bad}");
    }
}

#[test]
fn nats_subjects_are_names_to_publish_on() {
    let with = |subject: &str| {
        Config::new(Settings {
            nats: Some("nats://127.0.0.1:4222".into()),
            nats_subject: subject.into(),
            ..Settings::default()
        })
    };
    assert!(with("broadcast-server.lines").is_ok());
    assert!(with("chat").is_ok());
    for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", ">"] {
        assert!(
            matches!(with(bad), Err(ConfigError::BadNats { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn intervals_are_off_or_at_least_ten_milliseconds() {
    assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
    assert_eq!(parse_interval("0.01"), Ok(Duration::from_millis(10)));
    assert!(parse_interval("0.000001").is_err());
    assert!(parse_interval("inf").is_err());
}

#[test]
fn lines_are_at_most_a_gigabyte() {
    assert_eq!(parse_line_length("1GiB"), Ok(1 << 30));
    assert!(parse_line_length("1025MiB").is_err());
    assert!(parse_line_length("99999999999999999999").is_err());
}

#[test]
fn a_batch_and_the_line_completing_it_fit_an_empty_queue() {
    for (max_line, max_queue) in [
        (1024, 4096),
        (65536, 8 << 20),
        (10, 22),
        (1 << 30, usize::MAX),
    ] {
        let config = Config::new(Settings {
            max_line,
            max_queue,
            ..Settings::default()
        })
        .expect("valid");
        let limit = config.batch_limit();
        assert!(limit >= 1);
        assert!(limit <= BATCH_LIMIT);
        assert!(limit + max_line < max_queue, "{max_line} {max_queue}");
    }
}

#[test]
fn defaults_are_valid() {
    let config = Config::new(Settings::default()).expect("defaults must validate");
    assert_eq!(config.addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(config.stats_interval, None);
}

#[test]
fn zero_limits_are_refused() {
    for (settings, flag) in [
        (
            Settings {
                max_line: 0,
                ..Settings::default()
            },
            "--max-line",
        ),
        (
            Settings {
                max_queue: 0,
                ..Settings::default()
            },
            "--max-queue",
        ),
        (
            Settings {
                max_clients: 0,
                ..Settings::default()
            },
            "--max-clients",
        ),
    ] {
        assert_eq!(Config::new(settings), Err(ConfigError::Zero { flag }));
    }
}

#[test]
fn queue_must_be_larger_than_a_line_with_its_newline() {
    let settings = |max_queue| Settings {
        max_line: 100,
        max_queue,
        ..Settings::default()
    };
    assert!(matches!(
        Config::new(settings(101)),
        Err(ConfigError::QueueNotLargerThanLine { .. })
    ));
    assert!(Config::new(settings(102)).is_ok());
}

#[test]
fn addresses_resolve_or_explain() {
    let v6 = Config::new(Settings {
        addr: "[::1]:0".into(),
        ..Settings::default()
    })
    .expect("[::1]:0 is a valid address");
    assert_eq!(v6.addrs, vec!["[::1]:0".parse().unwrap()]);
    for bad in ["nonsense", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:port"] {
        let err = Config::new(Settings {
            addr: bad.into(),
            ..Settings::default()
        })
        .expect_err(bad);
        assert!(err.to_string().contains("invalid --addr"), "{err}");
    }
}

#[test]
fn listeners_clash_on_the_same_port_when_one_address_covers_the_other() {
    let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
    let clash = |a: &str, b: &str| same_port(&addr(a), &addr(b));
    assert!(clash("127.0.0.1:8080", "127.0.0.1:8080"));
    assert!(clash("0.0.0.0:8080", "127.0.0.1:8080"));
    assert!(clash("[::]:8080", "127.0.0.1:8080"));
    assert!(clash("[::]:8080", "[::1]:8080"));
    assert!(clash("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"));
    assert!(clash("[::ffff:0.0.0.0]:8080", "127.0.0.1:8080"));
    assert!(!clash("0.0.0.0:8080", "[::1]:8080"));
    assert!(!clash("127.0.0.1:8080", "127.0.0.2:8080"));
    assert!(!clash("127.0.0.1:8080", "127.0.0.1:8081"));
    assert!(!clash("127.0.0.1:0", "127.0.0.1:0"));
}
