//! The servers under test: broadcast-server (release build) and `ncat --broker`, each started
//! on a free loopback port, pinned to one core, and watched through /proc (RSS, CPU time).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BroadcastServer,
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

/// A running server process, killed on drop.
pub struct Target {
    child: Child,
    /// ncat broadcasts its stdin too and hangs up on everyone when it ends: keep it open.
    _stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
}

impl Target {
    /// Starts `kind` with `extra` flags (broadcast-server only) and waits until it accepts.
    pub fn start(kind: Kind, extra: &[&str]) -> Target {
        let addr = free_port();
        let mut command = Command::new("taskset");
        command.args(["-c", &SERVER_CPU.to_string()]);
        match kind {
            Kind::BroadcastServer => {
                command
                    .arg(env!("CARGO_BIN_EXE_broadcast-server"))
                    .args(["--addr", &addr.to_string(), "-q"])
                    .args(extra);
            }
            Kind::Ncat => {
                // ncat refuses more than 100 clients unless told otherwise.
                let port = addr.port().to_string();
                command.args([
                    "ncat",
                    "--broker",
                    "--max-conns",
                    "20000",
                    "--listen",
                    "127.0.0.1",
                    &port,
                ]);
            }
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server under taskset");
        let stdin = child.stdin.take();
        let mut target = Target {
            child,
            _stdin: stdin,
            addr,
        };
        target.wait_until_listening();
        target
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "server did not listen on {}",
                self.addr
            );
            thread::sleep(Duration::from_millis(5));
        }
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

    /// CPU time (user + system) used so far.
    pub fn cpu_time(&self) -> Duration {
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

/// A loopback address with a port that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe address")
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity(0) targets
    // the calling thread and only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("note: could not pin the load generator to CPU {cpu}");
        }
    }
}

/// CPU time used by the calling thread.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage into a live local.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Raises this process's descriptor limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    broadcast_server::fd_limit::raise_to_hard_limit().unwrap_or(1024)
}
