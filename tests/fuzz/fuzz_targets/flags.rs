//! The flag parsers: any text is a value within the flag's bounds or a message, never a
//! panic; a byte count reads back the same.
#![no_main]

use std::time::Duration;

use broadcast_server::config::{
    MAX_MAX_LINE, MAX_SECONDS, parse_interval, parse_line_length, parse_seconds, parse_size,
};
use broadcast_server::wire::host_port;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = parse_size(text) {
        assert_eq!(
            parse_size(&bytes.to_string()),
            Ok(bytes),
            "{text:?} does not read back"
        );
    }
    if let Ok(bytes) = parse_line_length(text) {
        assert!(bytes <= MAX_MAX_LINE);
    }
    let max = Duration::from_secs_f64(MAX_SECONDS);
    if let Ok(seconds) = parse_seconds(text) {
        assert!(seconds <= max);
    }
    if let Ok(interval) = parse_interval(text) {
        assert!(interval.is_zero() || (interval >= Duration::from_millis(10) && interval <= max));
    }
    if let Ok(parsed) = host_port::parse(text) {
        // Only a bracketed host may hold a `:` (an IPv6 address); else the port was not
        // split off.
        assert!(
            parsed.bracketed || !parsed.host.contains(':'),
            "{text:?}: {parsed:?}"
        );
    }
    for error in [parse_size(text).err(), parse_seconds(text).err()]
        .into_iter()
        .flatten()
    {
        assert!(!error.is_empty());
    }
});
