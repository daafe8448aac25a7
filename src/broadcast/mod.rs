//! The fan-out, pure and without mio: the batch of lines framed in one turn, its WebSocket
//! framing and its events, and the history kept for newcomers.

pub mod batch;
pub mod event_batch;
pub mod framed_batch;
pub mod history;
pub mod rooms;

use std::collections::VecDeque;
use std::io::IoSlice;

use crate::wire::sse::Resume;
use crate::wire::websocket;
use batch::{Batch, Sender, SenderShare};
use event_batch::{EventBatch, LineNumbers};
use framed_batch::FramedBatch;
use history::History;

/// One broadcast: the lines framed since the last hand-out, their WebSocket framing, the
/// lines kept for newcomers, and the unfinished lines of clients closed meanwhile. Pure
/// state, no sockets and no timer: each room has one (see [`rooms`]).
#[derive(Debug)]
pub struct Broadcast {
    /// Lines framed since the last hand-out.
    pub batch: Batch,
    /// The batch as WebSocket frames, built at a hand-out only when WebSocket clients
    /// receive it.
    pub framed: FramedBatch,
    /// The batch as Server-Sent Events, built at a hand-out only when `/events` readers
    /// receive it.
    pub events: EventBatch,
    /// Which stream this is, and how many lines it has handed out: what numbers its
    /// events.
    pub numbers: LineNumbers,
    /// The last lines handed out, for newcomers (`--history`).
    pub history: Option<History>,
    /// Unfinished lines (with a `\n` added) of clients closed other than by their own
    /// hang-up, waiting for space in the batch: kept here so that a burst of closes cannot
    /// grow the batch past its bound.
    pub kept_lines: VecDeque<(Sender, Vec<u8>)>,
}

impl Broadcast {
    /// A broadcast whose batch holds `batch` (see [`Batch::new`]), with a history if given;
    /// a new stream of numbered lines.
    pub fn new(batch: Batch, history: Option<History>) -> Broadcast {
        Broadcast {
            batch,
            framed: FramedBatch::default(),
            events: EventBatch::default(),
            numbers: LineNumbers::new_stream(),
            history,
            kept_lines: VecDeque::new(),
        }
    }
}

/// The form a recipient takes the lines in, chosen by its wire: the lines as they came, one
/// WebSocket frame per line, the lines as HTTP chunks (one chunk a hand-out), or one
/// Server-Sent Event per line. Each form of a batch is made once per hand-out and shared
/// by every recipient that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Lines,
    Frames,
    /// The body of `GET /lines` (chunked transfer coding): the batch between a chunk's
    /// head and its `\r\n`, no copy. Its readers never send lines.
    Chunks,
    /// The body of `GET /events`: the batch's events. Its readers never send lines.
    Events,
}

/// The head of an HTTP chunk of `len` bytes (`{len:x}\r\n`), without allocating.
#[derive(Debug, Clone, Copy)]
pub struct ChunkHead {
    bytes: [u8; 18],
    len: usize,
}

impl ChunkHead {
    pub fn new(len: usize) -> ChunkHead {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0; 18];
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
        for (i, byte) in bytes[..digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - i);
            *byte = HEX[(len >> shift) & 15];
        }
        bytes[digits..digits + 2].copy_from_slice(b"\r\n");
        ChunkHead {
            bytes,
            len: digits + 2,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What ends an HTTP chunk.
pub const CHUNK_END: &[u8] = b"\r\n";

/// Appends `parts` to `out` as one HTTP chunk (nothing for no bytes: an empty chunk would
/// end the body).
pub fn chunk_into(parts: &[&[u8]], out: &mut Vec<u8>) {
    let len = parts.iter().map(|part| part.len()).sum();
    if len == 0 {
        return;
    }
    out.extend_from_slice(ChunkHead::new(len).as_bytes());
    parts.iter().for_each(|part| out.extend_from_slice(part));
    out.extend_from_slice(CHUNK_END);
}

impl Form {
    /// The whole batch in this form, as slices into `out` (its framing and events are
    /// built when any recipient takes them; `head` is the batch's chunk head, for chunks).
    pub fn whole<'a>(
        self,
        broadcast: &'a Broadcast,
        head: &'a ChunkHead,
        out: &mut [IoSlice<'a>; 3],
    ) -> usize {
        match self {
            Form::Lines => out[0] = IoSlice::new(broadcast.batch.whole()),
            Form::Frames => out[0] = IoSlice::new(broadcast.framed.whole()),
            Form::Events => out[0] = IoSlice::new(broadcast.events.whole()),
            Form::Chunks => {
                *out = [
                    IoSlice::new(head.as_bytes()),
                    IoSlice::new(broadcast.batch.whole()),
                    IoSlice::new(CHUNK_END),
                ];
                return 3;
            }
        }
        1
    }

    /// A sender's share of the batch (everyone else's lines) in this form, as slices
    /// appended to `out`.
    pub fn share<'a>(
        self,
        share: &SenderShare<'a>,
        framed: &'a FramedBatch,
        out: &mut Vec<IoSlice<'a>>,
    ) {
        match self {
            Form::Lines => out.extend(share.parts().map(IoSlice::new)),
            Form::Frames => out.extend(framed.parts_for(share).map(IoSlice::new)),
            Form::Chunks | Form::Events => {} // their readers send no lines: never a sender
        }
    }

    /// What a newcomer is replayed from `broadcast`'s history in this form, and how many
    /// lines that holds: the ring's two halves as they are, or its lines framed into
    /// `frames`; as events, from `resume` on, after the `missed` event it calls for.
    pub fn replay<'a>(
        self,
        broadcast: &'a Broadcast,
        resume: Resume,
        frames: &'a mut Vec<u8>,
    ) -> ([IoSlice<'a>; 2], usize) {
        let history = broadcast.history.as_ref();
        let kept = history.map_or(0, History::lines);
        let ring = history.map_or((&[][..], &[][..]), History::as_slices);
        match self {
            Form::Lines => ([IoSlice::new(ring.0), IoSlice::new(ring.1)], kept),
            Form::Frames => {
                if let Some(history) = history {
                    frames.reserve(history.len() + 10 * kept);
                    history.for_each_line(|line| websocket::encode_line(line, frames));
                }
                ([IoSlice::new(frames), IoSlice::new(&[])], kept)
            }
            Form::Chunks => {
                chunk_into(&[ring.0, ring.1], frames);
                ([IoSlice::new(frames), IoSlice::new(&[])], kept)
            }
            Form::Events => {
                event_batch::history_events(history, &broadcast.numbers, resume, frames);
                let lines = kept.saturating_sub(resume.skip);
                ([IoSlice::new(frames), IoSlice::new(&[])], lines)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_heads_are_the_length_in_hex() {
        for (len, head) in [
            (0, "0"),
            (1, "1"),
            (15, "f"),
            (16, "10"),
            (262_144, "40000"),
        ] {
            assert_eq!(
                ChunkHead::new(len).as_bytes(),
                format!("{head}\r\n").as_bytes()
            );
        }
        let max = ChunkHead::new(usize::MAX);
        assert_eq!(max.as_bytes(), b"ffffffffffffffff\r\n");
    }
}
