//! `HOST[:PORT]` as `Host` and `Origin` headers and NATS server URLs write it, parsed in one
//! place: an IPv6 host in brackets, the port after the last `:` otherwise.

/// A parsed `HOST[:PORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host as written, without brackets.
    pub host: &'a str,
    /// Whether it was written in brackets (an IPv6 address).
    pub bracketed: bool,
    pub port: Option<u16>,
}

/// Why a `HOST[:PORT]` is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPortError {
    /// A `[` without its `]`.
    UnclosedBracket,
    /// The port is not a number from 0 to 65535.
    PortNotANumber,
    /// The port is 0.
    PortZero,
    /// The host is empty or holds a character no host name or address has.
    BadHost,
}

/// Parses `text` as `HOST[:PORT]` (`[V6]:PORT` for IPv6). Host characters: ASCII letters,
/// digits, `-`, `.`, `_`, and `:` inside brackets; nothing but `:PORT` after a `]`.
pub fn parse(text: &str) -> Result<HostPort<'_>, HostPortError> {
    let (host, bracketed, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(HostPortError::UnclosedBracket)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(HostPortError::BadHost)?),
            };
            (host, true, port)
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, false, Some(port)),
            None => (text, false, None),
        },
    };
    let port = match port {
        Some(port) => match port.parse::<u16>() {
            Ok(0) => return Err(HostPortError::PortZero),
            Err(_) => return Err(HostPortError::PortNotANumber),
            Ok(port) => Some(port),
        },
        None => None,
    };
    // A colon only inside brackets (an IPv6 address): `::1` unbracketed is no host.
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b) || (bracketed && b == b':'));
    if !host_ok {
        return Err(HostPortError::BadHost);
    }
    Ok(HostPort {
        host,
        bracketed,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_bracketed_ipv6() {
        let ok = |host, bracketed, port| {
            Ok(HostPort {
                host,
                bracketed,
                port,
            })
        };
        assert_eq!(parse("example.org"), ok("example.org", false, None));
        assert_eq!(
            parse("example.org:8080"),
            ok("example.org", false, Some(8080))
        );
        assert_eq!(parse("[::1]:4222"), ok("::1", true, Some(4222)));
        assert_eq!(parse("[::1]"), ok("::1", true, None));
        assert_eq!(parse("[::1"), Err(HostPortError::UnclosedBracket));
        assert_eq!(parse("h:0"), Err(HostPortError::PortZero));
        assert_eq!(parse("h:x"), Err(HostPortError::PortNotANumber));
        assert_eq!(parse("h:65536"), Err(HostPortError::PortNotANumber));
        assert_eq!(parse(":80"), Err(HostPortError::BadHost));
        assert_eq!(parse("a b:80"), Err(HostPortError::BadHost));
        assert_eq!(parse("[a/b]:80"), Err(HostPortError::BadHost));
        // Nothing but :PORT after the brackets; colons only inside them; no empty brackets.
        assert_eq!(parse("[::1]x:80"), Err(HostPortError::BadHost));
        assert_eq!(parse("[::1]80"), Err(HostPortError::BadHost));
        assert_eq!(parse("::1"), Err(HostPortError::BadHost));
        assert_eq!(parse("[]:80"), Err(HostPortError::BadHost));
        assert_eq!(parse("[]"), Err(HostPortError::BadHost));
        assert_eq!(parse("[[::1]:80"), Err(HostPortError::BadHost));
        assert_eq!(parse("a]:80"), Err(HostPortError::BadHost));
    }
}
