//! The process's logger: the one door every log line passes, ours and our dependencies'.
//!
//! Log lines quote what clients send (request paths, addresses as given, the SNI a
//! ClientHello carries, which rustls logs by itself) and a client must not be able to write
//! to the operator's terminal or grow the log at will. So, for every record, before
//! `env_logger` writes it:
//! - the message is cut at [`MAX_MESSAGE`] bytes (formatting stops there: a 180 KB SNI
//!   costs no more than a short one), and the cut is said;
//! - control characters (C0, DEL, C1: escape sequences, carriage returns, NEL) and the
//!   Unicode line and paragraph separators and bidirectional overrides are written as
//!   `\u{..}`, so one record is one line, shown as it is;
//! - records from other crates (rustls, tokio, ...) pass at most [`FOREIGN_BURST`] a
//!   second per crate; the rest are counted and summed up in one line the next time that
//!   crate logs. Our own storms are limited where they arise ([`crate::observe::log_limit`]).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::time::Instant;

use log::{Log, Metadata, Record};

use crate::observe::log_limit::RateLimit;

/// Longest message written (bytes, before escaping); past it the message is cut.
pub const MAX_MESSAGE: usize = 800;
/// Records a second that one other crate may log before the rest are summed up.
pub const FOREIGN_BURST: u64 = 5;
/// The crate whose records are not rate-limited here.
const OWN_CRATE: &str = "broadcast_server";

/// Wraps `inner`, escaping, bounding and (for other crates) rate-limiting every record.
pub struct GuardedLogger<L> {
    inner: L,
    foreign: Mutex<HashMap<String, RateLimit>>,
}

impl<L: Log> GuardedLogger<L> {
    pub fn new(inner: L) -> GuardedLogger<L> {
        GuardedLogger {
            inner,
            foreign: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a record from `target` may be written now; a count held back in an earlier
    /// window comes first as a summary line. Our own records always pass.
    fn admit(&self, target: &str) -> (bool, Option<u64>) {
        let krate = target.split("::").next().unwrap_or(target);
        if krate == OWN_CRATE {
            return (true, None);
        }
        let Ok(mut limits) = self.foreign.lock() else {
            return (false, None); // a thread panicked while logging: drop foreign noise
        };
        let limit = limits
            .entry(krate.to_string())
            .or_insert_with(|| RateLimit::with_burst(FOREIGN_BURST));
        let now = Instant::now();
        let summary = limit.take_summary(now);
        (limit.admit(now), summary)
    }
}

impl<L: Log> Log for GuardedLogger<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let (admitted, summary) = self.admit(record.target());
        if let Some(more) = summary {
            let args = format_args!("{more} more log lines from this crate held back");
            self.inner.log(
                &Record::builder()
                    .args(args)
                    .metadata(record.metadata().clone())
                    .build(),
            );
        }
        if !admitted {
            return;
        }
        let message = bounded_escaped(record.args());
        self.inner.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// `args` formatted, cut at [`MAX_MESSAGE`] bytes and escaped.
pub fn bounded_escaped(args: &fmt::Arguments<'_>) -> String {
    let mut out = Bounded {
        text: String::new(),
        cut: false,
    };
    // Formatting stops with an error once the bound is reached: nothing past it is built.
    let _ = out.write_fmt(*args);
    if out.cut {
        out.text.push_str(" …(cut)");
    }
    out.text
}

/// Escapes `text` for a log line and keeps at most `max` of its bytes (then says so): for
/// quoting one client string inside a longer message.
pub fn quote(text: &str, max: usize) -> String {
    let mut out = Bounded {
        text: String::new(),
        cut: false,
    };
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let _ = out.write_str(&text[..end]);
    if end < text.len() {
        out.text.push('…');
    }
    out.text
}

/// Quotes bytes a client sent (any bytes, e.g. a request path): invalid UTF-8 as `\x..`.
pub fn quote_bytes(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut text = String::new();
    for chunk in shown.utf8_chunks() {
        text.push_str(&quote(chunk.valid(), max));
        for b in chunk.invalid() {
            let _ = write!(text, "\\x{b:02x}");
        }
    }
    if shown.len() < bytes.len() {
        text.push('…');
    }
    text
}

/// A `fmt::Write` that escapes what it is given and stops at [`MAX_MESSAGE`] bytes.
struct Bounded {
    text: String,
    cut: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.text.len() >= MAX_MESSAGE {
                self.cut = true;
                return Err(fmt::Error);
            }
            if needs_escape(c) {
                let _ = write!(self.text, "\\u{{{:x}}}", c as u32);
            } else {
                self.text.push(c);
            }
        }
        Ok(())
    }
}

/// Characters a terminal or a log viewer would act on instead of showing.
fn needs_escape(c: char) -> bool {
    c.is_control() // C0 (tab and newline too), DEL, C1 (CSI, NEL, ...)
        || matches!(c, '\u{2028}' | '\u{2029}') // line and paragraph separators
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_separators_are_escaped() {
        let text = "a\u{9b}31mRED\u{85}FAKE\u{2028}INFO\r\n\x1b[2J\u{202e}z";
        let escaped = quote(text, 1000);
        assert_eq!(
            escaped,
            "a\\u{9b}31mRED\\u{85}FAKE\\u{2028}INFO\\u{d}\\u{a}\\u{1b}[2J\\u{202e}z"
        );
        assert!(!escaped.chars().any(needs_escape));
    }

    #[test]
    fn long_messages_are_cut_without_formatting_the_rest() {
        let long = "x".repeat(200_000);
        let message = bounded_escaped(&format_args!("SNI {long:?}"));
        assert!(message.len() < MAX_MESSAGE + 20, "{}", message.len());
        assert!(message.ends_with("…(cut)"));
        let short = bounded_escaped(&format_args!("fine {}", 42));
        assert_eq!(short, "fine 42");
    }

    #[test]
    fn quoting_bounds_bytes_and_shows_invalid_utf8() {
        assert_eq!(quote_bytes(b"/x\xff\xc2\x9b", 100), "/x\\xff\\u{9b}");
        assert_eq!(quote_bytes(&[b'a'; 10], 4), "aaaa…");
        assert_eq!(quote("héllo", 2), "h…", "cut on a character boundary");
    }

    proptest::proptest! {
        #[test]
        fn nothing_escapable_survives(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let quoted = quote_bytes(&bytes, 200);
            proptest::prop_assert!(!quoted.chars().any(needs_escape));
            proptest::prop_assert!(quoted.len() <= 200 * 8 + 4);
        }
    }

    /// A logger that records what reaches it.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Log for Recorder {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    #[test]
    fn other_crates_are_rate_limited_and_ours_is_not() {
        let logger = GuardedLogger::new(Recorder::default());
        let record = |target: &'static str| {
            logger.log(
                &Record::builder()
                    .args(format_args!("Illegal SNI \u{1b}"))
                    .target(target)
                    .build(),
            )
        };
        for _ in 0..100 {
            record("rustls::msgs::handshake");
            record("broadcast_server::tls");
        }
        let lines = logger.inner.0.lock().unwrap();
        assert_eq!(lines.len(), 100 + FOREIGN_BURST as usize);
        assert!(lines.iter().all(|l| l == "Illegal SNI \\u{1b}"));
    }
}
