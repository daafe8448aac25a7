//! The fan-out, pure and without mio: the batch of lines framed in one turn, its WebSocket
//! framing, and the history kept for newcomers.

pub mod batch;
pub mod framed_batch;
pub mod history;
pub mod rooms;

use std::collections::VecDeque;
use std::io::IoSlice;

use crate::wire::websocket;
use batch::{Batch, Sender, SenderShare};
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
    /// The last lines handed out, for newcomers (`--history`).
    pub history: Option<History>,
    /// Unfinished lines (with a `\n` added) of clients closed other than by their own
    /// hang-up, waiting for space in the batch: kept here so that a burst of closes cannot
    /// grow the batch past its bound.
    pub kept_lines: VecDeque<(Sender, Vec<u8>)>,
}

impl Broadcast {
    /// A broadcast whose batch holds `batch` (see [`Batch::new`]), with a history if given.
    pub fn new(batch: Batch, history: Option<History>) -> Broadcast {
        Broadcast {
            batch,
            framed: FramedBatch::default(),
            history,
            kept_lines: VecDeque::new(),
        }
    }
}

/// The form a recipient takes the lines in, chosen by its wire: the lines as they came, or
/// one WebSocket frame per line. Each form of a batch is made once per hand-out and shared
/// by every recipient that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Lines,
    Frames,
}

impl Form {
    /// The whole batch in this form (`framed` is built when any recipient takes frames).
    pub fn whole<'a>(self, batch: &'a Batch, framed: &'a FramedBatch) -> &'a [u8] {
        match self {
            Form::Lines => batch.whole(),
            Form::Frames => framed.whole(),
        }
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
        }
    }

    /// The history in this form, for a newcomer: the ring's two halves as they are, or its
    /// lines framed into `frames`.
    pub fn history<'a>(self, history: &'a History, frames: &'a mut Vec<u8>) -> [IoSlice<'a>; 2] {
        match self {
            Form::Lines => {
                let (front, back) = history.as_slices();
                [IoSlice::new(front), IoSlice::new(back)]
            }
            Form::Frames => {
                frames.reserve(history.len() + 10 * history.lines());
                history.for_each_line(|line| websocket::encode_line(line, frames));
                [IoSlice::new(frames), IoSlice::new(&[])]
            }
        }
    }
}
