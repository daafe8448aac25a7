//! Socket details the generator needs beyond mio: the kernel's receive timestamps, and the
//! wall clock they are comparable with.
//!
//! A reader's latency is taken when the kernel queued the data on the reader's socket
//! (`SO_TIMESTAMPNS`), not when the single-threaded generator got round to reading it: a busy
//! generator must not make a server look slow. For TCP the kernel reports one time per read,
//! that of the newest segment read, so every line of a read gets an arrival time no earlier
//! than its real one (latencies lean pessimistic, never optimistic).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch on the wall clock (`CLOCK_REALTIME`), the clock of the
/// kernel's receive timestamps.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Asks the kernel to stamp each segment `socket` receives with its arrival time.
pub fn enable_rx_timestamps(socket: &impl AsRawFd) -> io::Result<()> {
    set_flag(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)
}

/// Makes the kernel ACK what `fd` has received at once instead of delaying the ACK. Linux
/// clears the flag again by itself, so a reader that wants it re-arms it after every read.
pub fn quick_ack(fd: RawFd) -> io::Result<()> {
    set_flag(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK)
}

/// Turns on a boolean socket option.
fn set_flag(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local; fd is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads into `buf` once: the byte count (0 at end of stream) and the kernel's arrival time
/// of the newest segment read (ns since the epoch), if the kernel gave one.
pub fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // u64s keep the control buffer aligned for cmsghdr; 64 bytes fit one timespec message.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg points at live buffers (buf through iov, control) for the call's duration.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, arrival_time(&msg)))
}

/// The `SCM_TIMESTAMPNS` control message of a completed `recvmsg`, as ns since the epoch.
fn arrival_time(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled and bounded by
    // msg_controllen; the timespec is read unaligned from within that buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// Longest HTTP response head [`ask`] reads before giving up.
const MAX_HEAD: usize = 8 * 1024;

/// Sends `request` (an HTTP request, for `what`) on the blocking `stream` and reads the
/// answer's head, one byte at a time so that nothing after it is read here (at most 3 s a
/// read); fails unless its status line starts with `expected` (e.g. `HTTP/1.1 101 `).
pub fn ask(
    stream: &mut std::net::TcpStream,
    request: &str,
    expected: &str,
    what: &str,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let fail = |e: io::Error| format!("{what} failed: {e}");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .map_err(fail)?;
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(format!(
                "{what}: no end to the answer's head in {MAX_HEAD} bytes"
            ));
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("{what}: the server closed before its answer")),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    stream.set_read_timeout(None).map_err(fail)?;
    if !head.starts_with(expected.as_bytes()) {
        let status = String::from_utf8_lossy(&head);
        let status = status.lines().next().unwrap_or_default();
        return Err(format!("{what} refused: {status}"));
    }
    Ok(())
}
