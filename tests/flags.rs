//! Flags and start-up, through the binary: `--help` and `--version`, clear errors and a
//! failure exit for bad values and busy ports, and no flag value that reaches a panic.

mod common;

use std::net::TcpListener;

use common::{Client, Server};

/// Runs the binary with `args`, which it must refuse; returns (exit code, stderr).
fn run_refused(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = Server::run_to_exit(args);
    assert!(
        !stderr.contains("listening on"),
        "{args:?} started: {stderr}"
    );
    (code, stderr)
}

#[test]
fn no_flag_value_reaches_a_panic() {
    let refused: &[(&[&str], &str)] = &[
        (&["--stats-interval", "1e19"], "from 0 to 31536000"),
        (&["--shutdown-timeout", "1e19"], "from 0 to 31536000"),
        (&["--stats-interval", "inf"], "from 0 to 31536000"),
        (&["--shutdown-timeout", "nan"], "from 0 to 31536000"),
        (&["--shutdown-timeout", "18446744073709551615"], "from 0 to"),
        (&["--stats-interval", "1e300"], "from 0 to"),
        (&["--stats-interval", "0.000001"], "at least 0.01"),
        (&["--shutdown-timeout=-0.5"], "from 0 to"),
        (&["--max-queue", "16EiB"], "unknown unit 'eib'"),
        (&["--max-line", "99999999999999999999"], "is too large"),
        (&["--max-line", "2GiB"], "longest line allowed, 1GiB"),
        (&["--coalesce-us", "18446744073709551615"], "1000000"),
        (&["--coalesce-us", "1000001"], "1000000"),
        (&["--tcp-keepalive", "32768"], "32767"),
        (&["--max-clients", "99999999999999999999"], "invalid value"),
    ];
    for (args, reason) in refused {
        let (code, stderr) = run_refused(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: invalid value") && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panick"), "{args:?}: {stderr}");
    }
    let accepted: &[&[&str]] = &[
        &["--max-queue", "18446744073709551615"],
        &["--max-clients", "18446744073709551615"],
        &[
            "--stats-interval",
            "31536000",
            "--shutdown-timeout",
            "31536000",
        ],
        &["--coalesce-us", "1000000", "--tcp-keepalive", "32767"],
        &["--max-line", "1GiB", "--max-queue", "4GiB"],
    ];
    for args in accepted {
        // Each starts, serves a line, and stops cleanly on SIGTERM.
        let mut server = Server::start(args);
        let mut a = server.connect();
        let mut b = server.connect();
        a.send(b"extreme\n");
        b.expect(b"extreme\n");
        drop((a, b));
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit().code(), Some(0), "{args:?}");
        let log = server.final_log();
        assert!(!log.contains("panick"), "{args:?}: {log}");
    }
}

#[test]
fn nonsense_limits_are_refused_at_start_with_a_clear_message() {
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["--max-line", "0"],
            1,
            "error: --max-line must be at least 1\n",
        ),
        (
            &["--max-clients", "0"],
            1,
            "error: --max-clients must be at least 1\n",
        ),
        (
            &["--max-line", "1MiB", "--max-queue", "64KiB"],
            1,
            "error: --max-queue (65536 bytes) must be larger than a full line of --max-line \
             (1048576 bytes) with its newline: raise --max-queue or lower --max-line\n",
        ),
        (
            &["--max-queue", "lots"],
            2,
            "error: invalid value 'lots' for '--max-queue <BYTES>'",
        ),
        (
            &["--shutdown-timeout=-1"],
            2,
            "error: invalid value '-1' for '--shutdown-timeout",
        ),
    ];
    for (args, code, start) in cases {
        let (exit, _, stderr) = Server::run_to_exit(args);
        assert_eq!(exit, code, "{args:?}: {stderr}");
        assert!(stderr.starts_with(start), "{args:?}: {stderr}");
    }
}

#[test]
fn a_port_in_use_is_one_clear_error_line_and_a_failure_exit() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = Server::run_to_exit(&["--addr", &addr]);
    assert_eq!(code, 1);
    let expected_start =
        format!("error: cannot listen on {addr}: Address already in use (os error 98)");
    assert!(stderr.starts_with(&expected_start), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panick"), "{stderr}");
}

#[test]
fn a_bad_addr_is_one_clear_error_line_and_a_failure_exit() {
    for bad in ["nonsense", "127.0.0.1", "127.0.0.1:70000"] {
        let (code, _, stderr) = Server::run_to_exit(&["--addr", bad]);
        assert_eq!(code, 1, "{bad}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: invalid --addr '{bad}': ")),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn help_and_version_work() {
    let (code, stdout, _) = Server::run_to_exit(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--addr",
        "--echo",
        "--max-line",
        "--max-queue",
        "--max-clients",
        "--shutdown-timeout",
        "--stats-interval",
        "--verbose",
        "--quiet",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
    let (code, stdout, _) = Server::run_to_exit(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        format!("broadcast-server {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Address mistakes a newcomer makes are named for what they are, with what to write.
#[test]
fn address_mistakes_say_what_is_wrong_and_what_to_write() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let same = format!("127.0.0.1:{port}");
    let expected_tail = " (expected HOST:PORT, e.g. 127.0.0.1:8080, localhost:0 or [::1]:8080)\n";
    let cases: [(Vec<&str>, String); 3] = [
        (
            vec!["--addr", "8080"],
            "error: invalid --addr '8080': a port without a host: write 127.0.0.1:8080 for \
             this machine only, or 0.0.0.0:8080 for every interface"
                .to_string(),
        ),
        (
            vec!["--addr", ":8080"],
            "error: invalid --addr ':8080': missing the host before ':8080': write \
             127.0.0.1:8080 for this machine only, or 0.0.0.0:8080 for every interface"
                .to_string(),
        ),
        (
            vec!["--addr", &same, "--http", &same],
            format!(
                "error: invalid --http '{same}': --addr listens on port {port} already; give \
                 the web listener a port of its own"
            ),
        ),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = Server::run_to_exit(&args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        // A bad HOST:PORT says what one looks like; a good one on a taken port does not.
        let tail = if args.contains(&"--http") {
            "\n"
        } else {
            expected_tail
        };
        assert_eq!(stderr, format!("{message}{tail}"), "{args:?}");
    }
}

/// `--allow` and `--deny` repeat, and each value may hold several ranges separated by
/// commas (as `--nats` takes several URLs).
#[test]
fn allow_and_deny_take_comma_separated_ranges() {
    let server = Server::start(&[
        "--allow",
        "10.0.0.0/8,127.0.0.0/8",
        "--deny",
        "192.0.2.0/24,127.0.0.3",
    ]);
    let mut allowed = server.connect();
    let mut also = server.connect();
    allowed.send(b"in\n");
    also.expect(b"in\n");
    let mut denied = Client::connect_from(server.addr(), "127.0.0.3".parse().unwrap());
    assert_eq!(denied.read_to_eof(), b"");
    server.wait_for_log("denied 127.0.0.3:");
    let (code, _, stderr) = Server::run_to_exit(&["--allow", "10.0.0.0/8,10.0.0.0/33"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("error: invalid --allow: "), "{stderr}");
    let (code, _, stderr) = Server::run_to_exit(&["--deny", "10.0.0.0/8,"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "error: invalid --deny: an empty range (a stray comma?)\n"
    );
}
