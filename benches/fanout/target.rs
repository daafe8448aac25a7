//! The servers under test: broadcast-server (release build) and `ncat --broker`, each started
//! on a free loopback port, pinned to one core, and watched through /proc (RSS) and its
//! CPU-time clock (either may speak TLS, for the tls scenario); and `nats-server`, for the
//! bridge scenario.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// This crate's release binary.
    #[value(name = "broadcast-server")]
    BroadcastServer,
    /// `ncat --broker` (nmap's ncat), when installed.
    Ncat,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::BroadcastServer => "broadcast-server",
            Kind::Ncat => "ncat --broker",
        }
    }

    /// Whether this server can run here; `Err` says why not.
    pub fn available(self) -> Result<(), String> {
        match self {
            Kind::BroadcastServer => Ok(()),
            Kind::Ncat => match Command::new("ncat").arg("--version").output() {
                Ok(out) if out.status.success() || !out.stderr.is_empty() => Ok(()),
                _ => Err("ncat is not installed (apt-get install ncat)".to_string()),
            },
        }
    }
}

/// The core the server is pinned to; the load generator takes the other one.
pub const SERVER_CPU: usize = 0;
pub const LOADGEN_CPU: usize = 1;

/// What a measured run watches of the server processes it drives: one [`Target`], or
/// several sharing the server core.
pub trait Watched {
    /// CPU time used so far by each process, always in the same order.
    fn cpu_times(&self) -> Vec<Duration>;
    /// A counter of the time the processes were kept from their CPU by processes not under
    /// test (only differences between two readings mean anything).
    fn cpu_denied(&self) -> Duration;
    /// Resident set size in bytes, all processes together.
    fn rss_bytes(&self) -> u64;
}

impl Watched for Target {
    fn cpu_times(&self) -> Vec<Duration> {
        vec![self.cpu_time()]
    }

    /// Its run-queue wait: on its own core only other processes can delay it.
    fn cpu_denied(&self) -> Duration {
        self.cpu_wait()
    }

    fn rss_bytes(&self) -> u64 {
        Target::rss_bytes(self)
    }
}

/// A running server process, killed on drop.
pub struct Target {
    child: Child,
    /// ncat broadcasts its stdin too and hangs up on everyone when it ends: keep it open.
    _stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// The process's CPU-time clock (`clock_getcpuclockid`), if the kernel gave one.
    cpu_clock: Option<libc::clockid_t>,
}

impl Target {
    /// Starts `kind` with `extra` flags (broadcast-server only) and waits until it accepts.
    pub fn start(kind: Kind, extra: &[&str]) -> Result<Target, String> {
        Target::start_logging(kind, extra, None)
    }

    /// As [`Target::start`]; with `log`, broadcast-server logs at info level (its NATS
    /// bridge's state, its final counters) into that file instead of warnings to nowhere.
    pub fn start_logging(kind: Kind, extra: &[&str], log: Option<&Path>) -> Result<Target, String> {
        Target::launch(kind, extra, None, log)
    }

    /// As [`Target::start_logging`], speaking TLS with `tls` on every listener:
    /// broadcast-server with `--tls-cert`/`--tls-key`, ncat with `--ssl --ssl-cert
    /// --ssl-key`. With `log`, ncat's complaints (stderr) go there too.
    pub fn start_tls(
        kind: Kind,
        extra: &[&str],
        tls: &TlsFiles,
        log: Option<&Path>,
    ) -> Result<Target, String> {
        Target::launch(kind, extra, Some(tls), log)
    }

    fn launch(
        kind: Kind,
        extra: &[&str],
        tls: Option<&TlsFiles>,
        log: Option<&Path>,
    ) -> Result<Target, String> {
        let addr = free_port()?;
        let mut command = pinned_command();
        match kind {
            Kind::BroadcastServer => {
                command
                    .arg(env!("CARGO_BIN_EXE_broadcast-server"))
                    .args(["--addr", &addr.to_string()]);
                match log {
                    // Info level whatever RUST_LOG says: the caller reads the log.
                    Some(_) => command.env_remove("RUST_LOG"),
                    None => command.arg("-q"),
                };
                if let Some(tls) = tls {
                    command.arg("--tls-cert").arg(&tls.cert);
                    command.arg("--tls-key").arg(&tls.key);
                }
                command.args(extra);
            }
            Kind::Ncat => {
                // ncat refuses more than 100 clients unless told otherwise.
                let port = addr.port().to_string();
                command.args(["ncat", "--broker", "--max-conns", "20000"]);
                if let Some(tls) = tls {
                    command.arg("--ssl");
                    command.arg("--ssl-cert").arg(&tls.cert);
                    command.arg("--ssl-key").arg(&tls.key);
                }
                command.args(["--listen", "127.0.0.1", &port]);
            }
        }
        let stderr = match log {
            Some(path) => File::create(path)
                .map(Stdio::from)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            None => Stdio::null(),
        };
        let child = spawn(command, stderr, kind.name())?;
        let mut target = Target::watch(child, addr);
        target.wait_until_listening()?;
        Ok(target)
    }

    /// Starts `nats-server` on a free loopback port of its choosing, which it writes into a
    /// file in `dir`; returns it once it listens, and its URL.
    pub fn nats_server(dir: &Path) -> Result<(Target, String), String> {
        let mut command = pinned_command();
        command
            .args([
                "nats-server",
                "-a",
                "127.0.0.1",
                "-p",
                "-1",
                "--ports_file_dir",
            ])
            .arg(dir);
        let mut child = spawn(command, Stdio::null(), "nats-server")?;
        let url = match wait_for_ports_file(dir, &mut child) {
            Ok(url) => url,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(why);
            }
        };
        let addr = url
            .strip_prefix("nats://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("nats-server reported an odd address: {url}"))?;
        Ok((Target::watch(child, addr), url))
    }

    /// Watches a started process that serves at `addr`.
    fn watch(mut child: Child, addr: SocketAddr) -> Target {
        let stdin = child.stdin.take();
        // taskset execs the server, so the child's pid is the server's.
        let cpu_clock = process_cpu_clock(child.id());
        Target {
            child,
            _stdin: stdin,
            addr,
            cpu_clock,
        }
    }

    /// Asks the process to finish (SIGTERM) and waits up to `patience` for it to exit,
    /// then kills it; e.g. so that broadcast-server logs its final counters.
    pub fn stop(&mut self, patience: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill only sends a signal, to our own child, which is not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited at start: {status}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the server did not listen on {} in 10 s",
                    self.addr
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (0 once the process is gone).
    pub fn rss_bytes(&self) -> u64 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            return 0;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time (user + system) used so far: from the process's CPU-time clock (ns), or from
    /// /proc/PID/stat (10 ms ticks) if that clock is unavailable.
    pub fn cpu_time(&self) -> Duration {
        self.cpu_clock
            .and_then(read_clock)
            .unwrap_or_else(|| self.cpu_time_from_stat())
    }

    /// Time the server has spent runnable but waiting for a CPU (another process had it).
    pub fn cpu_wait(&self) -> Duration {
        schedstat_wait(&format!("/proc/{}/schedstat", self.pid()))
    }

    fn cpu_time_from_stat(&self) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return Duration::ZERO;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / per_second)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate chain and its key (PEM files) for a server to speak TLS with.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A directory for one run's files (port files, server logs), removed with its contents on
/// drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory under the system's temporary directory, named after `scenario`.
    pub fn new(scenario: &str) -> Result<Scratch, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fanout-{scenario}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server started for one run, logging into its own scratch directory.
pub struct LoggedTarget {
    pub target: Target,
    log: PathBuf,
    /// Declared last: dropped once the server writing into it is gone.
    _scratch: Scratch,
}

impl LoggedTarget {
    /// Starts a server with `start`, which is given the log file to write (a fresh one in
    /// a scratch directory named after `scenario`).
    pub fn start(
        scenario: &str,
        start: impl FnOnce(&Path) -> Result<Target, String>,
    ) -> Result<LoggedTarget, String> {
        let scratch = Scratch::new(scenario)?;
        let log = scratch.0.join("server.log");
        let target = start(&log)?;
        Ok(LoggedTarget {
            target,
            log,
            _scratch: scratch,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far, as one string ("" if it cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the server logged after the first `since` bytes of its log (see
    /// [`log_findings`]).
    pub fn findings_since(&self, since: usize) -> String {
        let text = self.log_text();
        log_findings(text.get(since..).unwrap_or_default())
    }
}

/// What a server log says about clients leaving, warnings, errors and failed TLS
/// handshakes (broadcast-server's log), or anything ncat complained of ("" if nothing):
/// for a run's note, and a search's reason for stopping.
pub fn log_findings(log: &str) -> String {
    let message = |line: &str| line.split_once("] ").map_or(line, |(_, m)| m).to_string();
    let mut findings = Vec::new();
    for (what, pattern) in [
        ("clients disconnected", " disconnected (token "),
        ("warnings", " WARN "),
        ("errors", " ERROR "),
        ("failed TLS handshakes", "tls: handshake with "),
        ("ncat messages", "Ncat: "),
    ] {
        let mut found = log.lines().filter(|l| l.contains(pattern));
        if let Some(first) = found.next() {
            let count = 1 + found.count();
            findings.push(format!(
                "server log: {count} {what}, first: {}",
                message(first)
            ));
        }
    }
    findings.join("; ")
}

/// `taskset -c SERVER_CPU`, ready for the program and its arguments.
fn pinned_command() -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &SERVER_CPU.to_string()]);
    command
}

/// Spawns `command` (stdin kept open, stdout discarded, stderr to `stderr`).
fn spawn(mut command: Command, stderr: Stdio, what: &str) -> Result<Child, String> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {what} under taskset: {e}"))
}

/// Waits (at most 10 s) for `nats-server_PID.ports` in `dir`, written once nats-server
/// listens, and returns the client URL in it (`{"nats":["nats://127.0.0.1:PORT"]}`).
fn wait_for_ports_file(dir: &Path, child: &mut Child) -> Result<String, String> {
    let path = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let url = text
            .split('"')
            .find(|part| part.starts_with("nats://"))
            .map(str::to_string);
        if let Some(url) = url {
            return Ok(url);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("nats-server exited at start: {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("nats-server wrote no {} in 10 s", path.display()));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `nats-server` can be run here; `Err` says why not.
pub fn nats_server_available() -> Result<(), String> {
    match Command::new("nats-server").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("nats-server is not installed (apt-get install nats-server)".to_string()),
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// The CPU-time clock of process `pid`.
fn process_cpu_clock(pid: u32) -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t into a live local.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    (rc == 0).then_some(clock)
}

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity(0) targets
    // the calling thread and only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("note: could not pin the load generator to CPU {cpu}");
        }
    }
}

/// CPU time used by the calling thread (ns resolution).
pub fn thread_cpu_time() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// Time the calling thread has spent runnable but waiting for a CPU.
pub fn thread_cpu_wait() -> Duration {
    schedstat_wait("/proc/thread-self/schedstat")
}

/// The run-queue wait (second field, ns) of a schedstat file; zero if it cannot be read.
fn schedstat_wait(path: &str) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// A counter of the time `cpu` was busy: running anything (processes, interrupts, kernel
/// threads) or taken by the hypervisor (steal). It is the monotonic clock minus the CPU's
/// idle and iowait times from /proc/stat, which come in 10 ms ticks.
pub fn cpu_busy(cpu: usize) -> Duration {
    let label = format!("cpu{cpu}");
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
    else {
        return Duration::ZERO;
    };
    // user nice system idle iowait ...
    let idle_ticks: u64 = line
        .split_whitespace()
        .skip(4)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let idle = Duration::from_nanos(idle_ticks * 1_000_000_000 / per_second);
    read_clock(libc::CLOCK_MONOTONIC)
        .unwrap_or_default()
        .saturating_sub(idle)
}

/// Raises this process's soft descriptor limit to its hard limit (10,000 idle clients need
/// more than the usual 1,024); returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local; setrlimit only reads one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    limit.rlim_cur
}
