//! Line framing: turning the arbitrary chunks a socket delivers into whole lines.
//!
//! A line is a run of bytes ending in `\n`; every other byte passes through untouched. The
//! framer keeps only the unterminated tail of what it was given, so complete lines leave in
//! the same call that completes them and an idle connection holds no memory. Each byte is
//! scanned once, when its chunk arrives: a long line trickling in one byte at a time costs
//! linear, not quadratic, time. The held line's capacity never passes `max_line`.

use std::collections::VecDeque;

use memchr::memchr;

/// The line terminator.
pub const NEWLINE: u8 = b'\n';

/// Collects the bytes of one client's unfinished line between reads.
#[derive(Debug, Default)]
pub struct LineFramer {
    /// Bytes received after the last `\n`; neither its length nor its capacity ever passes
    /// the `max_line` it was fed with.
    unfinished: VecDeque<u8>,
}

/// A line grew past `max_line`; nothing of it was emitted and the framer was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    /// How many complete lines of the same chunk were emitted before the offending one.
    pub lines_before: usize,
}

impl LineFramer {
    /// Feeds one chunk: appends every line it completes (with its `\n`) to `out` and keeps
    /// the unterminated rest. Returns how many lines were appended.
    ///
    /// A line longer than `max_line` bytes (not counting its `\n`), finished or not, is an
    /// error; lines before it in the chunk are still appended.
    pub fn push(
        &mut self,
        chunk: &[u8],
        max_line: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, LineTooLong> {
        // Cost: one pass over `chunk`; `unfinished` is only measured, never rescanned.
        let mut lines = 0;
        let mut line_start = 0;
        let mut carried = self.unfinished.len();
        while let Some(offset) = memchr(NEWLINE, &chunk[line_start..]) {
            if carried + offset > max_line {
                return Err(self.reject(chunk, line_start, lines, out));
            }
            lines += 1;
            line_start += offset + 1;
            carried = 0;
        }
        if carried + (chunk.len() - line_start) > max_line {
            return Err(self.reject(chunk, line_start, lines, out));
        }
        self.emit(&chunk[..line_start], out);
        self.hold(&chunk[line_start..], max_line);
        Ok(lines)
    }

    /// Keeps `rest` as (the end of) the unfinished line, growing the buffer by doubling as
    /// usual but never past `max_line`: the caller checked that the line fits.
    fn hold(&mut self, rest: &[u8], max_line: usize) {
        let needed = self.unfinished.len() + rest.len();
        if needed > self.unfinished.capacity() {
            let target = needed.max((self.unfinished.capacity() * 2).min(max_line));
            self.unfinished
                .reserve_exact(target - self.unfinished.len());
        }
        self.unfinished.extend(rest);
    }

    /// Ends the stream: a non-empty unterminated line is appended to `out` with a `\n` added,
    /// so nothing a client sent is lost when it leaves. Returns how many lines were appended.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> usize {
        if self.unfinished.is_empty() {
            return 0;
        }
        let (front, back) = self.unfinished.as_slices();
        out.extend_from_slice(front);
        out.extend_from_slice(back);
        out.push(NEWLINE);
        self.release();
        1
    }

    /// Bytes held for the unfinished line.
    pub fn unfinished_len(&self) -> usize {
        self.unfinished.len()
    }

    /// Appends the held unfinished line and `complete` (which ends in `\n`, or is empty) to `out`.
    fn emit(&mut self, complete: &[u8], out: &mut Vec<u8>) {
        if complete.is_empty() {
            return;
        }
        let (front, back) = self.unfinished.as_slices();
        out.extend_from_slice(front);
        out.extend_from_slice(back);
        out.extend_from_slice(complete);
        self.release();
    }

    /// Emits the lines that ended before `bad_start` and forgets everything after them.
    fn reject(
        &mut self,
        chunk: &[u8],
        bad_start: usize,
        lines_before: usize,
        out: &mut Vec<u8>,
    ) -> LineTooLong {
        self.emit(&chunk[..bad_start], out);
        self.release();
        LineTooLong { lines_before }
    }

    /// Empties the unfinished line and gives its memory back: most connections spend most of
    /// their life between lines, and an idle connection should cost nothing here.
    fn release(&mut self) {
        self.unfinished = VecDeque::new();
    }
}

/// Whether `line` (without its `\n`) is an HTTP/1 request line, `METHOD TARGET HTTP/1.x`:
/// what a browser sends first when a web page posts to the line port.
pub fn is_http_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    is_method(method) && !target.is_empty() && matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
}

/// Whether an unfinished `line` could be the start of an HTTP request line: an uppercase
/// method, a space and a target (`/...`, `*`, `http://...`). Chat rarely looks like that.
pub fn starts_like_http_request(line: &[u8]) -> bool {
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (method, target) = (&line[..space], &line[space + 1..]);
    is_method(method)
        && (target.starts_with(b"/") || target.starts_with(b"*") || target.starts_with(b"http"))
}

/// An HTTP method as browsers send it: 1 to 20 uppercase letters.
fn is_method(word: &[u8]) -> bool {
    (1..=20).contains(&word.len()) && word.iter().all(u8::is_ascii_uppercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_request_lines_are_recognised_by_their_start() {
        assert!(starts_like_http_request(b"POST /INJECTED-by-page HT"));
        assert!(starts_like_http_request(b"GET http://x/"));
        assert!(!starts_like_http_request(b"GET me a coffee"));
        assert!(!starts_like_http_request(b"hello"));
    }

    #[test]
    fn http_request_lines_are_recognised_and_chat_is_not() {
        for request in [
            &b"POST / HTTP/1.1\r"[..],
            b"GET /x?y HTTP/1.0",
            b"OPTIONS * HTTP/1.1",
        ] {
            assert!(is_http_request_line(request), "{request:?}");
        }
        for line in [
            &b"hello"[..],
            b"GET me a coffee",
            b"get / HTTP/1.1",
            b"POST / HTTP/2",
            b"POST  / HTTP/1.1",
            b"",
        ] {
            assert!(!is_http_request_line(line), "{line:?}");
        }
    }
    use proptest::prelude::*;

    /// Feeds `chunks` in order and returns (emitted bytes, line count, bytes still held).
    fn feed(chunks: &[&[u8]], max_line: usize) -> (Vec<u8>, usize, usize) {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        let mut lines = 0;
        for chunk in chunks {
            lines += framer
                .push(chunk, max_line, &mut out)
                .expect("within limit");
        }
        (out, lines, framer.unfinished_len())
    }

    #[test]
    fn whole_lines_pass_straight_through() {
        assert_eq!(feed(&[b"a\nbc\n"], 10), (b"a\nbc\n".to_vec(), 2, 0));
    }

    #[test]
    fn unfinished_lines_wait_for_their_newline() {
        assert_eq!(
            feed(&[b"he", b"llo", b"\nwor"], 10),
            (b"hello\n".to_vec(), 1, 3)
        );
    }

    #[test]
    fn empty_lines_and_binary_bytes_are_lines_too() {
        let input = b"\n\0\r\xff\xfe\n\r\n";
        assert_eq!(feed(&[input], 10), (input.to_vec(), 3, 0));
    }

    #[test]
    fn finish_appends_a_newline_to_the_unterminated_rest() {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        assert_eq!(framer.push(b"a\nlast", 10, &mut out), Ok(1));
        assert_eq!(framer.finish(&mut out), 1);
        assert_eq!(out, b"a\nlast\n");
        assert_eq!(framer.finish(&mut out), 0, "nothing is held any more");
    }

    #[test]
    fn a_line_of_exactly_max_line_bytes_is_accepted() {
        assert_eq!(feed(&[b"abcd", b"\n"], 4), (b"abcd\n".to_vec(), 1, 0));
    }

    #[test]
    fn an_overlong_complete_line_is_rejected_after_the_lines_before_it() {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        let result = framer.push(b"ok\ntoo long\nlater\n", 4, &mut out);
        assert_eq!(result, Err(LineTooLong { lines_before: 1 }));
        assert_eq!(out, b"ok\n");
        assert_eq!(framer.unfinished_len(), 0);
    }

    #[test]
    fn an_overlong_unfinished_line_is_rejected_as_soon_as_it_grows_past_the_limit() {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        assert_eq!(framer.push(b"abc", 4, &mut out), Ok(0));
        assert_eq!(
            framer.push(b"de", 4, &mut out),
            Err(LineTooLong { lines_before: 0 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn the_unfinished_line_counts_towards_the_limit_of_the_line_it_starts() {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        assert_eq!(framer.push(b"abc", 4, &mut out), Ok(0));
        assert_eq!(
            framer.push(b"de\n", 4, &mut out),
            Err(LineTooLong { lines_before: 0 })
        );
    }

    #[test]
    fn the_held_line_never_holds_more_memory_than_max_line() {
        for max_line in [1, 7, 1000, 65536] {
            let mut framer = LineFramer::default();
            let mut out = Vec::new();
            for _ in 0..max_line {
                framer.push(b"x", max_line, &mut out).expect("within limit");
                assert!(framer.unfinished.capacity() <= max_line);
            }
            assert_eq!(framer.unfinished_len(), max_line);
        }
    }

    proptest! {
        /// Any way of cutting a stream into chunks yields the same lines and the same rest.
        #[test]
        fn chunking_never_changes_the_lines(
            stream in proptest::collection::vec(
                prop_oneof![Just(NEWLINE), any::<u8>(), Just(b'a')], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..40),
        ) {
            let whole = feed(&[&stream], usize::MAX);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            prop_assert_eq!(feed(&chunks, usize::MAX), whole);
        }

        /// Splitting never moves where the limit bites: either both feedings reject, or
        /// both accept the same lines.
        #[test]
        fn chunking_never_changes_the_limit(
            stream in proptest::collection::vec(prop_oneof![Just(NEWLINE), Just(b'a')], 0..200),
            cut in 0usize..200,
            max_line in 1usize..12,
        ) {
            let cut = cut.min(stream.len());
            let run = |chunks: &[&[u8]]| {
                let mut framer = LineFramer::default();
                let mut out = Vec::new();
                for chunk in chunks {
                    if framer.push(chunk, max_line, &mut out).is_err() {
                        return (out, true);
                    }
                }
                (out, false)
            };
            prop_assert_eq!(run(&[&stream[..cut], &stream[cut..]]), run(&[&stream]));
        }
    }
}
