//! What waits to be written to the NATS server, with how many lines each message carries,
//! so that lines count as published only once the socket has taken them, and lines still
//! waiting when a connection is lost are counted as dropped, not as published. Pure.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Messages (and protocol lines) not yet taken by the socket.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// Appended since the last write began.
    queued: BytesMut,
    /// The part being written now.
    writing: Bytes,
    /// Each message's bytes not yet taken and its lines, oldest first (protocol lines
    /// carry none).
    messages: VecDeque<(usize, usize)>,
    /// Bytes of protocol lines (our PINGs and PONGs) not yet taken: a server that keeps
    /// asking but does not read would grow them.
    control: usize,
}

impl Outgoing {
    /// Bytes not yet taken by the socket.
    pub fn len(&self) -> usize {
        self.queued.len() + self.writing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Protocol bytes (PINGs, PONGs) not yet taken by the socket.
    pub fn control_len(&self) -> usize {
        self.control
    }

    /// Appends one message of `bytes` (in parts) carrying `lines` lines (none: a protocol
    /// line).
    pub fn push(&mut self, parts: &[&[u8]], lines: usize) {
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        for part in parts {
            self.queued.extend_from_slice(part);
        }
        if lines == 0 {
            self.control += bytes;
        }
        self.messages.push_back((bytes, lines));
    }

    /// The bytes to write next (empty when nothing waits).
    pub fn next(&mut self) -> &Bytes {
        if self.writing.is_empty() && !self.queued.is_empty() {
            self.writing = self.queued.split().freeze();
        }
        &self.writing
    }

    /// The socket took `n` bytes of [`Outgoing::next`]; returns the lines of the messages
    /// it finished.
    pub fn written(&mut self, mut n: usize) -> usize {
        self.writing.advance(n.min(self.writing.len()));
        let mut lines = 0;
        while n > 0 {
            let Some((left, carried)) = self.messages.front_mut() else {
                break;
            };
            let took = n.min(*left);
            *left -= took;
            n -= took;
            if *carried == 0 {
                self.control -= took;
            }
            if *left == 0 {
                lines += *carried;
                self.messages.pop_front();
            }
        }
        lines
    }

    /// Everything still waiting, as one buffer (for a last write at exit).
    pub fn take_all(&mut self) -> (Vec<u8>, usize) {
        let bytes = [self.writing.as_ref(), self.queued.as_ref()].concat();
        (bytes, self.abandon())
    }

    /// Drops everything still waiting (the connection is gone); returns its lines.
    pub fn abandon(&mut self) -> usize {
        self.queued.clear();
        self.writing = Bytes::new();
        self.control = 0;
        self.messages.drain(..).map(|(_, lines)| lines).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_once_the_socket_took_their_whole_message() {
        let mut out = Outgoing::default();
        out.push(&[b"PUB s 4\r\n", b"a\nb\n", b"\r\n"], 2);
        out.push(&[b"PING\r\n"], 0);
        out.push(&[b"PUB s 2\r\nc\n\r\n"], 1);
        let total = out.len();
        assert_eq!(out.next().len(), total);
        assert_eq!(out.written(5), 0, "half of the first message");
        assert_eq!(out.written(10), 2);
        assert_eq!(out.control_len(), 6);
        assert_eq!(out.written(6), 0, "the PING");
        assert_eq!(out.control_len(), 0);
        out.push(&[b"PUB s 2\r\nd\n\r\n"], 1);
        assert_eq!(out.abandon(), 2, "the third message and the fourth");
        assert_eq!(out.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn written_and_abandoned_lines_add_up(
            messages in proptest::collection::vec((1usize..50, 0usize..5), 1..20),
            writes in proptest::collection::vec(1usize..80, 0..20),
        ) {
            let mut out = Outgoing::default();
            for (bytes, lines) in &messages {
                out.push(&[&vec![b'x'; *bytes]], *lines);
            }
            let mut published = 0;
            for n in writes {
                let next = out.next().len();
                if next == 0 {
                    break;
                }
                published += out.written(n.min(next));
            }
            let all: usize = messages.iter().map(|m| m.1).sum();
            proptest::prop_assert_eq!(published + out.abandon(), all);
        }
    }
}
