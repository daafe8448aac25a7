//! Hostile clients for the chaos scenario: threads that keep opening connections and
//! misbehaving on every transport until told to stop, each action bounded in bytes and
//! time (every socket has 1 s timeouts). Every hostile client that sends lines first moves
//! to a room of its own (`/join junkN`; the servers run with `--rooms`), so its junk never
//! reaches the good clients in room `main`: what they must see is exactly their own lines.
//!
//! What they do, at random: on the line port, binary junk then a FIN, a reset in the middle
//! of a line, a half-close, a line over `--max-line`, an HTTP request, a flood of commands,
//! or connecting and never reading; on the web listener, garbage requests, an oversized
//! head, a request that never ends, POSTs of junk (some with a line over `--max-line`),
//! a POST that lies about its length and resets, readers of `/lines` and `/events` that
//! reset or half-close, WebSocket clients that send malformed frames or invalid UTF-8, and
//! upgrades that stall; over TLS, garbage instead of a ClientHello, a ClientHello that
//! stops half-way, and sessions that send junk and reset.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::frames;

/// Connections that linger (never read, never finish) at most, all threads together.
const MAX_LINGERING: usize = 100;
/// How long any socket operation of a hostile client may block.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Where the hostile clients go.
#[derive(Clone)]
pub struct Targets {
    /// The line port and the web listener of the plaintext server.
    pub lines: SocketAddr,
    pub web: SocketAddr,
    /// The line port of the TLS server, and how to speak TLS to it.
    pub tls: SocketAddr,
    pub tls_config: Arc<rustls::ClientConfig>,
    /// The servers' `--max-line`.
    pub max_line: usize,
}

/// The hostile threads, running.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<u64>>,
    lingering: Arc<Mutex<Vec<TcpStream>>>,
}

impl Hostile {
    /// Starts `count` threads of hostile clients against `targets`.
    pub fn start(targets: &Targets, count: usize) -> Hostile {
        let stop = Arc::new(AtomicBool::new(false));
        let lingering = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..count)
            .map(|n| {
                let (stop, lingering, targets) =
                    (Arc::clone(&stop), Arc::clone(&lingering), targets.clone());
                thread::spawn(move || {
                    let mut client = Client {
                        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ ((n as u64 + 1) * 0x2545_f491_4f6c_dd1d)),
                        targets,
                        lingering,
                    };
                    let mut actions = 0;
                    while !stop.load(Ordering::Relaxed) {
                        client.act();
                        actions += 1;
                    }
                    actions
                })
            })
            .collect();
        Hostile {
            stop,
            threads,
            lingering,
        }
    }

    /// Stops the threads and closes every lingering connection; returns how many hostile
    /// connections were made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let actions = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum();
        self.lingering.lock().map(|mut l| l.clear()).unwrap_or(());
        actions
    }
}

/// A small, fast pseudo-random generator (xorshift64*): reproducible runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `len` random bytes, about one in `every` of them a newline (0: none).
    fn bytes(&mut self, len: usize, every: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let byte = self.next() as u8;
                if every > 0 && self.below(every) == 0 {
                    b'\n'
                } else if byte == b'\n' {
                    b'x'
                } else {
                    byte
                }
            })
            .collect()
    }
}

/// One hostile thread's state.
struct Client {
    rng: Rng,
    targets: Targets,
    lingering: Arc<Mutex<Vec<TcpStream>>>,
}

impl Client {
    /// One hostile connection, chosen at random; errors (the server closing on us) are
    /// what is expected and are ignored.
    fn act(&mut self) {
        let _ = match self.rng.below(21) {
            0 => self.line_junk_then_fin(),
            1 => self.line_reset_mid_line(),
            2 => self.line_half_close(),
            3 => self.line_too_long(),
            4 => self.line_http_request(),
            5 => self.line_command_flood(),
            6 => self.line_never_reads(),
            7 => self.web_garbage(),
            8 => self.web_huge_head(),
            9 => self.web_never_finishes(),
            10 => self.web_post_junk(),
            11 => self.web_post_lies_and_resets(),
            12 => self.web_reader_resets(),
            13 => self.ws_malformed_frames(),
            14 => self.ws_invalid_text(),
            15 => self.ws_upgrade_stalls(),
            16 => self.tls_garbage(),
            17 => self.tls_hello_stops_half_way(),
            18 => self.tls_junk_session(),
            19 => self.web_reader_half_closes(),
            _ => self.web_events_with_a_bad_id(),
        };
    }

    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(stream)
    }

    /// A line client moved to a junk room of its own.
    fn line_client(&mut self) -> std::io::Result<TcpStream> {
        let mut stream = self.connect(self.targets.lines)?;
        let room = self.rng.below(50);
        stream.write_all(format!("/join junk{room}\n").as_bytes())?;
        Ok(stream)
    }

    /// Keeps `stream` open, never reading, until the run ends (or drops it if enough
    /// linger already).
    fn linger(&self, stream: TcpStream) {
        if let Ok(mut lingering) = self.lingering.lock()
            && lingering.len() < MAX_LINGERING
        {
            lingering.push(stream);
        }
    }

    fn reset(stream: TcpStream) {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }

    /// Reads what comes for a moment (an answer, an `ERR`), to let the server finish.
    fn read_a_little(stream: &mut TcpStream) {
        let mut buf = [0; 4096];
        let _ = stream.read(&mut buf);
    }

    fn line_junk_then_fin(&mut self) -> std::io::Result<()> {
        let mut stream = self.line_client()?;
        let len = 1 + self.rng.below(8192);
        stream.write_all(&self.rng.bytes(len, 40))
    }

    fn line_reset_mid_line(&mut self) -> std::io::Result<()> {
        let mut stream = self.line_client()?;
        let len = 1 + self.rng.below(2000);
        stream.write_all(&self.rng.bytes(len, 0))?;
        Self::reset(stream);
        Ok(())
    }

    fn line_half_close(&mut self) -> std::io::Result<()> {
        let mut stream = self.line_client()?;
        let len = 1 + self.rng.below(500);
        stream.write_all(&self.rng.bytes(len, 0))?;
        stream.shutdown(Shutdown::Write)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn line_too_long(&mut self) -> std::io::Result<()> {
        let mut stream = self.line_client()?;
        let len = self.targets.max_line + 1 + self.rng.below(4096);
        stream.write_all(&self.rng.bytes(len, 0))?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn line_http_request(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.lines)?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn line_command_flood(&mut self) -> std::io::Result<()> {
        let mut stream = self.line_client()?;
        let mut commands = Vec::new();
        for n in 0..200 {
            let command = match self.rng.below(4) {
                0 => format!("/join junk{}\n", self.rng.below(50)),
                1 => "/rooms\n".to_string(),
                2 => format!("//escaped {n}\n"),
                _ => "/nonsense\n".to_string(),
            };
            commands.extend_from_slice(command.as_bytes());
        }
        stream.write_all(&commands)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn line_never_reads(&mut self) -> std::io::Result<()> {
        let stream = self.line_client()?;
        self.linger(stream);
        Ok(())
    }

    fn web_garbage(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let len = 1 + self.rng.below(2000);
        let mut request = self.rng.bytes(len, 30);
        request.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&request)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn web_huge_head(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let filler = "x".repeat(9000 + self.rng.below(4000));
        stream.write_all(format!("GET / HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n").as_bytes())?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn web_never_finishes(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        stream.write_all(b"GET /lines HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
        self.linger(stream);
        Ok(())
    }

    fn web_post_junk(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let len = 1 + self.rng.below(64 * 1024);
        // Mostly short lines; now and then none, so one runs past --max-line (413).
        let every = if self.rng.below(4) == 0 { 0 } else { 60 };
        let body = self.rng.bytes(len, every);
        let room = self.rng.below(50);
        let head =
            format!("POST /lines/junk{room} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn web_post_lies_and_resets(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        stream.write_all(
            b"POST /lines/junk0 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        )?;
        let len = self.rng.below(5000);
        stream.write_all(&self.rng.bytes(len, 20))?;
        Self::reset(stream);
        Ok(())
    }

    fn web_reader_resets(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let path = ["/lines/junk1", "/events/junk1", "/lines", "/events"][self.rng.below(4)];
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
        Self::read_a_little(&mut stream);
        Self::reset(stream);
        Ok(())
    }

    /// A reader of room main's lines (where lines keep coming) that half-closes, reads a
    /// little, and goes: the server keeps a reader that half-closes (HTTP allows it) and
    /// finds it gone at its next write. (In a room where nothing is said, that write may
    /// not come: such a reader is found by TCP keepalive once its host has forgotten the
    /// connection, a minute later; see docs/web.md.)
    fn web_reader_half_closes(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let path = ["/lines", "/events"][self.rng.below(2)];
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn web_events_with_a_bad_id(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let id = match self.rng.below(4) {
            0 => "ffffffffffffffff-18446744073709551615".to_string(),
            1 => format!("{:016x}-{}", self.rng.next(), self.rng.next()),
            2 => String::from_utf8_lossy(&self.rng.bytes(40, 0)).replace(['\r', '\n'], ""),
            _ => "0000000000000000-0".to_string(),
        };
        let request =
            format!("GET /events?since={id} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {id}\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        Self::read_a_little(&mut stream);
        Self::reset(stream);
        Ok(())
    }

    /// A WebSocket client of a junk room, its upgrade answered.
    fn websocket(&mut self) -> std::io::Result<TcpStream> {
        let mut stream = self.connect(self.targets.web)?;
        let host = self.targets.web.to_string();
        let room = self.rng.below(50);
        let request = frames::upgrade_request(&host, "").replacen(
            "GET /ws ",
            &format!("GET /ws/junk{room} "),
            1,
        );
        stream.write_all(request.as_bytes())?;
        let mut head = [0; 1024];
        let _ = stream.read(&mut head)?;
        Ok(stream)
    }

    fn ws_malformed_frames(&mut self) -> std::io::Result<()> {
        let mut stream = self.websocket()?;
        let len = 2 + self.rng.below(300);
        stream.write_all(&self.rng.bytes(len, 0))?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn ws_invalid_text(&mut self) -> std::io::Result<()> {
        let mut stream = self.websocket()?;
        let mut out = Vec::new();
        for n in 0..20 {
            let text = format!("junk {n} {}", self.rng.next());
            frames::frame_into(1, true, Some([1, 2, 3, 4]), text.as_bytes(), &mut out);
        }
        frames::frame_into(1, true, Some([1, 2, 3, 4]), b"\xff\xfe not UTF-8", &mut out);
        stream.write_all(&out)?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn ws_upgrade_stalls(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.web)?;
        let request = frames::upgrade_request(&self.targets.web.to_string(), "");
        stream.write_all(&request.as_bytes()[..request.len() / 2])?;
        self.linger(stream);
        Ok(())
    }

    fn tls_garbage(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.tls)?;
        let len = 1 + self.rng.below(3000);
        stream.write_all(&self.rng.bytes(len, 0))?;
        Self::read_a_little(&mut stream);
        Ok(())
    }

    fn tls_hello_stops_half_way(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.tls)?;
        // A handshake record header announcing 512 bytes, then only some of them.
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let len = self.rng.below(200);
        hello.extend(self.rng.bytes(len, 0));
        stream.write_all(&hello)?;
        self.linger(stream);
        Ok(())
    }

    fn tls_junk_session(&mut self) -> std::io::Result<()> {
        let mut stream = self.connect(self.targets.tls)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut session = rustls::ClientConnection::new(Arc::clone(&self.targets.tls_config), name)
            .map_err(std::io::Error::other)?;
        let room = self.rng.below(50);
        let mut plain = format!("/join junk{room}\n").into_bytes();
        let len = 1 + self.rng.below(4000);
        plain.extend(self.rng.bytes(len, 50));
        session.writer().write_all(&plain)?;
        // Drive the handshake and the data for a moment, then vanish.
        for _ in 0..20 {
            while session.wants_write() {
                session.write_tls(&mut stream)?;
            }
            if session.wants_read() {
                match session.read_tls(&mut stream) {
                    Ok(0) => break,
                    Ok(_) => {
                        if session.process_new_packets().is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !session.is_handshaking() && !session.wants_write() {
                break;
            }
        }
        Self::reset(stream);
        Ok(())
    }
}
