//! Test helpers: spawn the real binary on a free port, follow its log, talk raw TCP to it.
//!
//! Every wait here has a deadline; nothing sleeps in place of synchronising. A client counts
//! as connected once the server has logged it, so a test never races the accept.

#![allow(dead_code)] // each test file uses its own subset

pub mod certs;
pub mod frames;
pub mod tls;
pub mod websocket;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails; generous for a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The server's stderr, line by line, shared with the thread that reads it.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Set once stderr reached end of file (the process exited).
    ended: std::sync::atomic::AtomicBool,
}

/// How the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An orderly close: everything sent arrived.
    Fin,
    /// A reset: whatever was still in flight was thrown away.
    Reset,
}

/// A running `broadcast-server` process; killed when dropped.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Log>,
}

impl Server {
    /// Starts the server on 127.0.0.1:0 with extra `args`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_command(Server::command(args))
    }

    /// The command `start` would run, for tests that need to adjust it (limits, env).
    pub fn command(args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-server"));
        if !args.contains(&"--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        command.args(args).env_remove("RUST_LOG");
        command
    }

    /// Runs the binary to completion with `args` (as `command` sets it up: RUST_LOG cleared,
    /// port 0 unless `--addr` is given, no stdin); returns (exit code, stdout, stderr).
    pub fn run_to_exit(args: &[&str]) -> (i32, String, String) {
        let output = Server::command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run broadcast-server");
        (
            output.status.code().expect("exited, not killed"),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Spawns `command` and waits for its `listening on ADDR` line.
    pub fn start_command(mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn broadcast-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
            let _guard = sink.lines.lock().unwrap();
            sink.ended.store(true, std::sync::atomic::Ordering::SeqCst);
            sink.grew.notify_all();
        });
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        // "] listening on": not the web listener's "http listening on" line.
        let line = server.wait_for_log("] listening on ");
        // "listening on ADDR", or "listening on ADDR (TLS)".
        let addr = line.rsplit("listening on ").next().unwrap();
        let addr = addr.split_whitespace().next().unwrap_or_default();
        server.addr = addr.parse().expect("listening line ends in an address");
        server
    }

    /// The web listener's address, from the `http listening on ADDR` line (`--http`).
    pub fn web_addr(&self) -> SocketAddr {
        self.wait_for_log("http listening on ")
            .rsplit("http listening on ")
            .next()
            .and_then(|addr| addr.split_whitespace().next()?.parse().ok())
            .expect("an address in the http listening line")
    }

    /// Connects a WebSocket client and waits until the server has registered it.
    pub fn connect_websocket(&self) -> websocket::WsClient {
        let client = websocket::WsClient::connect_raw(self.web_addr());
        let local = client.stream.local_addr().unwrap();
        self.wait_for_log(&format!("websocket client {local} connected"));
        client
    }

    /// Connects a WebSocket client to `path` (`/ws/NAME`) and waits until the server has
    /// registered it.
    pub fn connect_websocket_to(&self, path: &str) -> websocket::WsClient {
        let client = websocket::WsClient::connect_path(self.web_addr(), path);
        let local = client.stream.local_addr().unwrap();
        self.wait_for_log(&format!("websocket client {local} connected"));
        client
    }

    /// Sends a raw HTTP request to the web listener and returns the whole response.
    pub fn http(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(self.web_addr()).expect("connect to the web listener");
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        let mut client = Client { stream };
        String::from_utf8_lossy(&client.read_to_eof()).into_owned()
    }

    /// `GET path` on the web listener: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let response = self.http(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(needle, 1).pop().unwrap()
    }

    /// Waits until `count` log lines contain `needle`; returns them.
    pub fn wait_for_logs(&self, needle: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            let found: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {count} log lines with {needle:?}; log:\n{}",
                lines.join("\n")
            );
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The complete log of a process that has exited (waits for stderr to end).
    pub fn final_log(&self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.log.lines.lock().unwrap();
        while !self.log.ended.load(std::sync::atomic::Ordering::SeqCst) {
            let now = Instant::now();
            assert!(now < deadline, "stderr did not end");
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
        lines.join("\n")
    }

    /// Log lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The whole log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Connects and waits until the server has registered the client.
    pub fn connect(&self) -> Client {
        let client = Client::connect_raw(self.addr);
        self.wait_for_log(&format!("client {} connected", client.local_addr()));
        client
    }

    /// The token the server gave `client` (from its `connected (token N)` log line).
    pub fn token_of(&self, client: &Client) -> String {
        self.token_of_addr(client.local_addr())
    }

    /// The token the server gave the client connected from `local` (TCP or TLS).
    pub fn token_of_addr(&self, local: SocketAddr) -> String {
        self.wait_for_log(&format!("client {local} connected (token "))
            .rsplit("(token ")
            .next()
            .unwrap_or_default()
            .trim_end_matches(')')
            .to_string()
    }

    /// Connects `n` clients, waiting for all of them to be registered.
    pub fn connect_many(&self, n: usize) -> Vec<Client> {
        let clients: Vec<Client> = (0..n).map(|_| Client::connect_raw(self.addr)).collect();
        for client in &clients {
            self.wait_for_log(&format!("client {} connected", client.local_addr()));
        }
        clients
    }

    /// Waits until the server has logged the disconnect of the client at `local`.
    pub fn wait_for_disconnect(&self, local: SocketAddr) -> String {
        self.wait_for_log(&format!("client {local} disconnected"))
    }

    /// Stops the server (SIGSTOP) and waits until it is stopped: the signal is delivered
    /// asynchronously, and a test that acts "while it is stopped" must know it is.
    pub fn stop_and_wait(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
                .expect("read /proc/PID/status");
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains("stopped"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "the server never stopped");
            thread::sleep(Duration::from_millis(5)); // polling /proc, with a deadline
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the server gracefully (SIGTERM), checks that it exits 0, and returns its last
    /// log line: the final stats line.
    pub fn stop_for_stats(&mut self) -> String {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.log_text());
        let log = self.final_log();
        log.lines().last().unwrap_or_default().to_string()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak resident memory of the server process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// A `kB` field of /proc/PID/status.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in /proc/PID/status"))
    }

    /// Open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One TCP client of the server.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    /// Connects without waiting for the server to notice.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to server");
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2: all of 127.0.0.0/8 reaches
    /// 127.0.0.1 here), without waiting for the server to notice.
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .expect("bind the local address");
        socket
            .connect_timeout(&addr.into(), DEADLINE)
            .expect("connect to server");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to server");
    }

    /// Reads exactly `n` bytes, failing the test at the deadline.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {got} of {n} bytes");
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => panic!(
                    "connection closed after {got} of {n} bytes: {:?}",
                    String::from_utf8_lossy(&buf[..got])
                ),
                Ok(k) => got += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed after {got} of {n} bytes: {e}"),
            }
        }
        buf
    }

    /// Reads exactly `expected.len()` bytes and asserts they are `expected`.
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "bytes differ"
        );
        assert_eq!(got, expected);
    }

    /// Reads until the server closes with a FIN; returns everything read. Fails on a reset
    /// and at the deadline.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        self.read_to_eof_pacing(Duration::ZERO)
    }

    /// Like `read_to_eof`, pausing `pause` after each read, as a slow client would.
    pub fn read_to_eof_pacing(&mut self, pause: Duration) -> Vec<u8> {
        match self.read_until_closed_pacing(pause) {
            (all, Closed::Fin) => all,
            (all, Closed::Reset) => panic!("reset instead of a close, after {} bytes", all.len()),
        }
    }

    /// Reads until the server closes, by a FIN or a reset; returns everything read and how
    /// it ended. Fails at the deadline.
    pub fn read_until_closed(&mut self) -> (Vec<u8>, Closed) {
        self.read_until_closed_pacing(Duration::ZERO)
    }

    fn read_until_closed_pacing(&mut self, pause: Duration) -> (Vec<u8>, Closed) {
        let deadline = Instant::now() + DEADLINE;
        let mut all = Vec::new();
        let mut buf = vec![0; 256 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no close before the deadline ({} bytes)",
                all.len()
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return (all, Closed::Fin),
                Ok(k) => all.extend_from_slice(&buf[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return (all, Closed::Reset),
                Err(e) => panic!("read failed: {e}"),
            }
            if !pause.is_zero() {
                thread::sleep(pause);
            }
        }
    }

    /// Closes our sending side (FIN) but keeps reading.
    pub fn half_close(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Closes with an RST instead of a FIN (SO_LINGER with a zero timeout).
    pub fn reset(self) {
        socket2::SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(self.stream);
    }

    /// Shrinks the receive buffer so the server's output backs up quickly. Readers should
    /// use a size of at least 64 KiB: below one loopback MSS, the window reopens only on
    /// the sender's persist timer and reading crawls.
    pub fn set_receive_buffer(&self, bytes: usize) {
        socket2::SockRef::from(&self.stream)
            .set_recv_buffer_size(bytes)
            .expect("SO_RCVBUF");
    }
}

/// Sends 16 MB of numbered lines (far beyond a stuck client's `--max-queue` of a few MiB
/// and the kernel's buffers) a piece at a time: each piece goes out with `send`, and
/// `read_back` takes it at the readers that keep up before the next piece goes.
pub fn stream_sixteen_megabytes(mut send: impl FnMut(&[u8]), mut read_back: impl FnMut(&[u8])) {
    let filler = "s".repeat(200);
    for k in 0..80 {
        let piece = numbered_lines(&format!("{filler}{k}"), 1_000);
        send(&piece);
        read_back(&piece);
    }
}

/// Sends `signal` (a `libc::SIG*` number) to the process `pid`, one of the test's own
/// children (rustix: no `unsafe`).
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a child's pid");
    let signal = rustix::process::Signal::from_named_raw(signal).expect("a named signal");
    rustix::process::kill_process(pid, signal).expect("kill");
}

/// The `-vv` log split into turns: for each turn, its log lines.
pub fn turns(log: &str) -> Vec<Vec<&str>> {
    let mut turns = Vec::new();
    for line in log.lines() {
        if line.contains("] turn ") {
            turns.push(Vec::new());
        } else if let Some(turn) = turns.last_mut() {
            turn.push(line);
        }
    }
    turns
}

/// Whether some turn of a `-vv` log has a line containing `a` and one containing `b`.
pub fn in_one_turn(log: &str, a: &str, b: &str) -> bool {
    turns(log)
        .iter()
        .any(|turn| turn.iter().any(|l| l.contains(a)) && turn.iter().any(|l| l.contains(b)))
}

/// From a `-vv` log: for each turn, the bytes read from the client with `token`.
pub fn reads_per_turn(log: &str, token: &str) -> Vec<usize> {
    let needle = format!("token {token}: read ");
    turns(log)
        .iter()
        .map(|turn| {
            turn.iter()
                .filter_map(|l| l.split(&needle).nth(1))
                .map(|rest| rest.split(' ').next().unwrap().parse::<usize>().unwrap())
                .sum()
        })
        .collect()
}

/// The number that follows the first `needle` in `text` (up to the next space); fails the
/// test if there is none.
pub fn number_after(text: &str, needle: &str) -> u64 {
    text.split(needle)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {needle:?} in {text:?}"))
}

/// Waits until `condition` holds, polling it every few milliseconds; fails the test at the
/// deadline, saying `what` it waited for.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// `count` numbered lines `prefix-N\n` as one byte string.
pub fn numbered_lines(prefix: &str, count: usize) -> Vec<u8> {
    numbered_lines_in(prefix, 0..count)
}

/// `prefix-N\n` for N in `range`, as one byte string.
pub fn numbered_lines_in(prefix: &str, range: std::ops::Range<usize>) -> Vec<u8> {
    range
        .flat_map(|i| format!("{prefix}-{i}\n").into_bytes())
        .collect()
}

/// Says, past the test harness's output capture (straight to stderr), that a test was
/// skipped and why, so a reader of the CI log sees it even when everything passes. Under CI
/// (`CI` set, as `.ci/run` is run) a skip is a failure: CI installs every outside program
/// the tests need, so a test that cannot run there hides a broken setup.
pub fn report_skip(test: &str, why: &str) {
    use std::io::Write as _;
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Floods the broadcast (`lines` lines of about 100 bytes, more than the kernel's buffers
/// and `--max-queue` hold for a client that reads nothing) from a new sender while a new
/// client reads it all; returns once the server has cut `stuck` as a slow consumer, with
/// the sender and the reader for more.
pub fn flood_until_cut(server: &Server, stuck: &Client, lines: usize) -> (Client, Client) {
    let sender = server.connect();
    let mut fast = server.connect();
    let flood = numbered_lines(&"f".repeat(100), lines);
    let sending = {
        let flood = flood.clone();
        thread::spawn(move || {
            let mut sender = sender;
            sender.send(&flood);
            sender
        })
    };
    fast.expect(&flood);
    let sender = sending.join().expect("the sender thread");
    let why = server.wait_for_log(&format!("client {} disconnected", stuck.local_addr()));
    assert!(why.contains("slow consumer"), "{why}");
    (sender, fast)
}

/// A client that never reads, with about `bytes` of lines sent to it; returns it, and the
/// exact byte count, once a reader that keeps up has them all.
pub fn stuck_client_behind(server: &Server, bytes: usize) -> (Client, usize) {
    let stuck = server.connect();
    stuck.set_receive_buffer(4096);
    let mut fast = server.connect();
    let mut sender = server.connect();
    let lines = numbered_lines(&"s".repeat(100), bytes / 110);
    sender.send(&lines);
    fast.expect(&lines);
    (stuck, lines.len())
}
