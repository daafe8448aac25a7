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

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

/// Most plaintext handed to rustls at once: it encrypts and holds this much until the
/// socket takes it.
const TLS_CHUNK: usize = 64 * 1024;

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
}

impl Transport {
    /// A TLS transport for a newly accepted socket: the handshake happens as it is read.
    pub fn tls(tcp: TcpStream, mut tls: ServerConnection) -> Transport {
        tls.set_buffer_limit(Some(TLS_CHUNK));
        Transport::Tls(Box::new(TlsStream {
            tcp,
            tls,
            close_notify_sent: false,
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

    /// Moves the TLS handshake on as far as the socket allows: `Ok(true)` once it is
    /// complete (at once, in the clear), `Ok(false)` to wait for the next event. A failure
    /// (a plaintext client, no or a bad client certificate) is an error after the alert.
    pub fn complete_handshake(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
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
    fn complete_handshake(&mut self) -> io::Result<bool> {
        while self.tls.is_handshaking() {
            if !self.flush_records()? {
                return Ok(false); // our records wait for room: WRITABLE
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.flush_records(); // the alert tells the client why
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        // The handshake's last messages (and TLS 1.3 session tickets).
        self.flush_records()?;
        Ok(true)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: the stream ended all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext waiting: take more records from the socket.
            if self.tls.read_tls(&mut self.tcp)? == 0 {
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
