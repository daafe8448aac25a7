//! How bytes travel on one client's socket: in the clear, or through TLS (rustls). Knows
//! nothing of lines, frames or other clients.
//!
//! A TLS transport is rustls's `ServerConnection` beside the `TcpStream`, as in rustls's
//! `tlsserver-mio` example, adapted to edge-triggered readiness: reads loop `read_tls` /
//! `process_new_packets` / plaintext until the kernel has no more, and writes feed plaintext
//! to rustls only as fast as encrypted records leave, so rustls holds at most one chunk
//! (`TLS_CHUNK`) and everything else a slow client is owed stays in the connection's own
//! queue, where `--max-queue` judges it. Every TLS record produced (handshake replies, alerts,
//! key updates) is flushed at once: no readiness event would come for it otherwise.

pub mod tls;

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

/// Most plaintext handed to rustls at once: it encrypts and holds this much until the
/// socket takes it.
const TLS_CHUNK: usize = 64 * 1024;
/// What reading one TLS record costs beyond its bytes, in bytes of read budget: decrypting
/// and processing a record has a fixed cost of about that many bytes of bulk decryption, so
/// a client sending 1-byte records spends its turn's budget on about as much work as one
/// sending 16 KiB records (instead of 65,536 decryptions a turn).
pub const RECORD_COST: usize = 1024;
/// Most read cost one handshake step may spend (a ClientHello of 64 KiB in 1-byte records
/// takes several steps, each in its turn, instead of one long one).
pub const HANDSHAKE_STEP_COST: usize = 32 * 1024;
/// Most read cost one plaintext read may spend on records that yield no plaintext (empty
/// records, key updates) before it returns to let the caller judge its budget.
const READ_STEP_COST: usize = 16 * 1024;

/// Bytes to and from one client.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: plain clients stay small.
    Tls(Box<TlsStream>),
}

/// A TLS session over a socket.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Set once close_notify was queued (it is sent once).
    close_notify_sent: bool,
    /// Where the incoming record stream is, to count records.
    records: RecordMeter,
    /// Read cost (bytes plus [`RECORD_COST`] per record) not yet taken by the caller.
    cost: usize,
}

/// How far a TLS handshake got in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// Done (at once, in the clear).
    Complete,
    /// Waiting for the client, or for room in the socket: the next event moves it on.
    Waiting,
    /// The step spent [`HANDSHAKE_STEP_COST`] with input still unread: no event will come
    /// for that input, so the caller must move it on again (in a later turn).
    BudgetSpent,
}

impl Transport {
    /// A TLS transport for a newly accepted socket: the handshake happens as it is read.
    pub fn tls(tcp: TcpStream, mut tls: ServerConnection) -> Transport {
        tls.set_buffer_limit(Some(TLS_CHUNK));
        Transport::Tls(Box::new(TlsStream {
            tcp,
            tls,
            close_notify_sent: false,
            records: RecordMeter::default(),
            cost: 0,
        }))
    }

    /// The socket underneath (for registration, socket options and kernel queue sizes).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(stream) => &stream.tcp,
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(stream) => &mut stream.tcp,
        }
    }

    /// Whether this is a TLS transport.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Moves the TLS handshake on as far as the socket allows, within
    /// [`HANDSHAKE_STEP_COST`]. A failure (a plaintext client, no or a bad client
    /// certificate) is an error after the alert.
    pub fn complete_handshake(&mut self) -> io::Result<HandshakeProgress> {
        match self {
            Transport::Plain(_) => Ok(HandshakeProgress::Complete),
            Transport::Tls(stream) => stream.complete_handshake(),
        }
    }

    /// During the handshake: WRITABLE too while records wait for room in the socket.
    pub fn update_handshake_interest(
        &mut self,
        registry: &Registry,
        token: Token,
    ) -> io::Result<()> {
        let interest = if self.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(self.tcp_mut(), token, interest)
    }

    /// Reads plaintext. `Ok(0)`: the client is done (end of stream, or TLS close_notify);
    /// `WouldBlock`: nothing more until the next readable event. A TLS failure (a
    /// plaintext client, a bad certificate, a corrupt record) is `InvalidData`, after the
    /// alert was sent.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }

    /// Reads like [`Transport::read`], and says what the read cost in bytes of read budget:
    /// in the clear the plaintext read; through TLS the bytes taken from the socket plus
    /// [`RECORD_COST`] per record (never less than the plaintext).
    pub fn read_metered(&mut self, buf: &mut [u8]) -> (io::Result<usize>, usize) {
        match self {
            Transport::Plain(tcp) => {
                let read = tcp.read(buf);
                let cost = *read.as_ref().unwrap_or(&0);
                (read, cost)
            }
            Transport::Tls(stream) => {
                let read = stream.read(buf);
                (read, std::mem::take(&mut stream.cost))
            }
        }
    }

    /// Writes `bufs` (in the clear: one `writev`; through TLS: as much as rustls encrypts and
    /// the socket takes). Returns how many plaintext bytes were taken.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write_vectored(bufs),
            Transport::Tls(stream) => stream.write_vectored(bufs),
        }
    }

    /// Sends what rustls still holds (records already encrypted). `Ok(true)`: all of it.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(stream) => stream.flush_records(),
        }
    }

    /// Whether rustls holds records not yet sent (then WRITABLE is needed).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(stream) => stream.tls.wants_write(),
        }
    }

    /// Ends our side: through TLS, close_notify first; the FIN follows once every record
    /// has left. `Ok(false)`: records still wait for room in the socket (call again when it
    /// is writable; `wants_write` says so).
    pub fn shutdown_write(&mut self) -> io::Result<bool> {
        if let Transport::Tls(stream) = self {
            if !stream.close_notify_sent {
                stream.close_notify_sent = true;
                stream.tls.send_close_notify();
            }
            if !stream.flush_records()? {
                return Ok(false);
            }
        }
        self.tcp().shutdown(Shutdown::Write)?;
        Ok(true)
    }

    /// Plaintext rustls holds, already received and decrypted but not read yet (0 in the
    /// clear): input that no readiness event will announce.
    pub fn buffered_plaintext(&mut self) -> usize {
        match self {
            Transport::Plain(_) => 0,
            Transport::Tls(stream) => stream
                .tls
                .process_new_packets()
                .map_or(0, |state| state.plaintext_bytes_to_read()),
        }
    }
}

impl TlsStream {
    fn complete_handshake(&mut self) -> io::Result<HandshakeProgress> {
        // This step's cost (no one takes a handshake's cost: each step starts afresh).
        self.cost = 0;
        while self.tls.is_handshaking() {
            if !self.flush_records()? {
                return Ok(HandshakeProgress::Waiting); // our records wait for room: WRITABLE
            }
            if self.cost >= HANDSHAKE_STEP_COST {
                return Ok(HandshakeProgress::BudgetSpent);
            }
            match self.read_records() {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(HandshakeProgress::Waiting);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.flush_records(); // the alert tells the client why
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        // The first read after the handshake is charged for its own records only.
        self.cost = 0;
        // The handshake's last messages (and TLS 1.3 session tickets).
        self.flush_records()?;
        Ok(HandshakeProgress::Complete)
    }

    /// Hands rustls the next bytes from the socket (at most 4 KiB: rustls reads no more at
    /// once), adding their cost.
    fn read_records(&mut self) -> io::Result<usize> {
        let mut metered = MeteredRead {
            tcp: &mut self.tcp,
            records: &mut self.records,
            cost: &mut self.cost,
        };
        self.tls.read_tls(&mut metered)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = self.cost;
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: the stream ended all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.cost - start >= READ_STEP_COST {
                // Records without plaintext: let the caller judge its budget first.
                return Err(io::ErrorKind::Interrupted.into());
            }
            // No plaintext waiting: take more records from the socket.
            if self.read_records()? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the client why (the alert), then fail.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages, alerts or key updates to send back.
            self.flush_records()?;
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut taken = 0;
        let mut index = 0;
        let mut offset = 0;
        loop {
            if !self.flush_records()? {
                break; // the socket is full
            }
            // Hand rustls the next slices, up to its buffer limit.
            let Some(buf) = bufs.get(index) else {
                break;
            };
            let n = self.tls.writer().write(&buf[offset..])?;
            if n == 0 && buf.len() > offset {
                break; // rustls is full and the socket took nothing: try again later
            }
            taken += n;
            offset += n;
            if offset == buf.len() {
                index += 1;
                offset = 0;
            }
        }
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes held records until none is left (`true`) or the socket is full (`false`).
    fn flush_records(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Counts the TLS records in a byte stream read in pieces of any size, by their 5-byte
/// headers (type, version, length): what rustls will decrypt one by one.
#[derive(Debug, Default, Clone)]
pub struct RecordMeter {
    /// Header bytes of the next record seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current record still to come.
    body_left: usize,
}

impl RecordMeter {
    /// Takes the next bytes of the stream; returns how many records they begin.
    pub fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut records = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 5 {
                records += 1;
                self.header_len = 0;
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
        records
    }
}

/// The socket as rustls reads it, adding each read's bytes and records to a cost.
struct MeteredRead<'a> {
    tcp: &'a mut TcpStream,
    records: &'a mut RecordMeter,
    cost: &'a mut usize,
}

impl Read for MeteredRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        let records = self.records.feed(&buf[..n]);
        *self.cost += n + records * RECORD_COST;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: u16) -> Vec<u8> {
        let mut bytes = vec![23, 3, 3];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xaa, usize::from(len)));
        bytes
    }

    #[test]
    fn records_are_counted_by_their_headers() {
        let stream: Vec<u8> = [record(1), record(0), record(300), record(1)].concat();
        assert_eq!(RecordMeter::default().feed(&stream), 4);
        let mut meter = RecordMeter::default();
        assert_eq!(meter.feed(&stream[..3]), 0, "half a header");
        assert_eq!(meter.feed(&stream[3..7]), 1);
        assert_eq!(meter.feed(&stream[7..]), 3);
    }

    proptest::proptest! {
        #[test]
        fn any_split_counts_the_same(
            lens in proptest::collection::vec(0u16..2000, 0..20),
            cuts in proptest::collection::vec(1usize..700, 1..50),
        ) {
            let stream: Vec<u8> = lens.iter().map(|&l| record(l)).collect::<Vec<_>>().concat();
            let mut meter = RecordMeter::default();
            let (mut at, mut counted) = (0, 0);
            for cut in cuts.iter().cycle() {
                if at >= stream.len() {
                    break;
                }
                let end = (at + cut).min(stream.len());
                counted += meter.feed(&stream[at..end]);
                at = end;
            }
            proptest::prop_assert_eq!(counted, lens.len());
        }
    }
}
