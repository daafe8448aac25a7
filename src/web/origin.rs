//! Which web pages may open a WebSocket to us: the `Origin` check that stops cross-site
//! WebSocket hijacking. Pure: header values in, a verdict out.
//!
//! A browser sends `Origin` with every WebSocket upgrade, naming the page that asks
//! (`scheme://host[:port]`), and WebSocket upgrades are not subject to CORS: without this
//! check any page a user visits could read and write the broadcast through the user's
//! browser. An upgrade is accepted when it carries no `Origin` (not a browser: nc-style
//! tools, curl, libraries, which could claim any origin anyway), when its origin is the
//! server's own (the scheme of the listener, `http` or `https` under TLS, and the `Host` the
//! browser sent, so `localhost` and `127.0.0.1` each work as loaded), or when it is listed
//! with `--allow-origin`. It is not authentication: it only keeps other sites' pages out.
//!
//! DNS rebinding: a page at `http://evil.example:8081` whose name the attacker then points
//! at 127.0.0.1 sends `Host: evil.example:8081` and that same origin, so "Host equals
//! Origin" alone would let it in. Without TLS the own origin therefore counts only when the
//! `Host` is an IP address or `localhost`; a plain-HTTP server reached by a DNS name lists
//! that name's origin with `--allow-origin`. Under TLS any name counts: a rebound name
//! fails the browser's certificate check before any request is sent.

use std::fmt;

use crate::wire::host_port;

/// `scheme://host:port`, lowercased, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses a serialized origin as browsers send it (`https://example.com`,
    /// `http://127.0.0.1:8081`, `http://[::1]:8081`). `null` and anything with a path,
    /// credentials or another scheme is not one.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let bad = |why: &str| {
            format!(
                "'{text}' is not an origin ({why}); use scheme://host[:port], e.g. https://example.com:8443"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https") {
            return Err(bad("the scheme is not http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad("an origin has no path, user or query"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("no host, or a bad port"))?;
        Ok(Origin {
            port: port.unwrap_or(default_port(&scheme)),
            scheme,
            host,
        })
    }

    /// The origin a request that carried `Host: host` names on a listener that speaks
    /// `https` (`tls`) or `http`: the server's own, unless it is rebindable (see above).
    fn named_by_host(host_header: &str, tls: bool) -> Option<Origin> {
        let scheme = if tls { "https" } else { "http" };
        let (host, port) = split_host_port(host_header.trim())?;
        Some(Origin {
            port: port.unwrap_or(default_port(scheme)),
            scheme: scheme.to_string(),
            host,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// An IP literal (`127.0.0.1`, `[::1]`) or `localhost`: names no DNS answer can move.
fn is_address_or_localhost(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<std::net::IpAddr>().is_ok()
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// `host[:port]` or `[v6][:port]`: the host lowercased, the port if given.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let parsed = host_port::parse(text).ok()?;
    let host = match parsed.bracketed {
        true => format!("[{}]", parsed.host),
        false => parsed.host.to_string(),
    };
    Some((host.to_ascii_lowercase(), parsed.port))
}

/// The origins allowed besides the server's own (`--allow-origin`), or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
    /// `--allow-origin '*'`: no check at all.
    any: bool,
}

impl OriginPolicy {
    /// From the `--allow-origin` values: exact origins, or `*` for no check.
    pub fn parse(values: &[String]) -> Result<OriginPolicy, String> {
        let mut policy = OriginPolicy::default();
        for value in values {
            if value == "*" {
                policy.any = true;
            } else {
                policy.allowed.push(Origin::parse(value)?);
            }
        }
        Ok(policy)
    }

    /// Whether the check is off (`--allow-origin '*'`).
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether an upgrade with these `Origin` and `Host` header values, on a listener that
    /// speaks TLS or not, may go ahead (the tests' shorthand for [`OriginPolicy::judge`]).
    #[cfg(test)]
    fn admits(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
        self.judge(origin, host, tls) == Verdict::Admitted
    }

    /// The verdict on an upgrade with these `Origin` and `Host` header values, on a listener
    /// that speaks TLS or not.
    pub fn judge(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> Verdict {
        let Some(origin) = origin else {
            return Verdict::Admitted; // not a browser
        };
        if self.any {
            return Verdict::Admitted;
        }
        let Ok(origin) = Origin::parse(origin.trim()) else {
            return Verdict::Foreign; // `null` (a sandboxed or file page), anything malformed
        };
        if self.allowed.contains(&origin) {
            return Verdict::Admitted;
        }
        match host.and_then(|host| Origin::named_by_host(host, tls)) {
            Some(named) if named == origin && (tls || is_address_or_localhost(&named.host)) => {
                Verdict::Admitted
            }
            Some(named) if named == origin => Verdict::Rebindable,
            _ => Verdict::Foreign,
        }
    }
}

/// What the Origin check says of an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Another site's page.
    Foreign,
    /// Its origin is its `Host`, a DNS name over plain HTTP: this server's own name, perhaps,
    /// refused only because such a name could be rebound (the refusal's log line then says
    /// how to allow it).
    Rebindable,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(values: &[&str]) -> OriginPolicy {
        OriginPolicy::parse(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_servers_own_origin_is_the_host_the_browser_used() {
        let none = policy(&[]);
        assert!(none.admits(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8081"), false));
        assert!(none.admits(Some("http://localhost:8081"), Some("localhost:8081"), false));
        assert!(none.admits(Some("HTTP://LocalHost:8081"), Some("localhost:8081"), false));
        assert!(none.admits(Some("https://example.com"), Some("example.com:443"), true));
        // Over plain HTTP a DNS name could be rebound to us: not our own without a listing.
        assert!(!none.admits(
            Some("http://evil.example:8081"),
            Some("evil.example:8081"),
            false
        ));
        assert!(!none.admits(
            Some("http://localhost.evil.example:8081"),
            Some("localhost.evil.example:8081"),
            false
        ));
        assert!(none.admits(Some("http://10.1.2.3:8081"), Some("10.1.2.3:8081"), false));
        let (evil, evil_host) = (Some("http://evil.example:8081"), Some("evil.example:8081"));
        assert_eq!(none.judge(evil, evil_host, false), Verdict::Rebindable);
        assert_eq!(
            none.judge(evil, Some("127.0.0.1:8081"), false),
            Verdict::Foreign
        );
        assert!(none.admits(Some("http://[::1]:8081"), Some("[::1]:8081"), false));
        // Another port, host or scheme is another site.
        assert!(!none.admits(Some("http://127.0.0.1:9000"), Some("127.0.0.1:8081"), false));
        assert!(!none.admits(Some("http://localhost:8081"), Some("127.0.0.1:8081"), false));
        assert!(!none.admits(Some("http://example.com"), Some("example.com"), true));
        assert!(!none.admits(Some("null"), Some("127.0.0.1:8081"), false));
        assert!(!none.admits(Some("http://127.0.0.1:8081"), None, false));
        // No Origin: not a browser.
        assert!(none.admits(None, None, false));
    }

    #[test]
    fn listed_origins_and_the_wildcard() {
        let named = policy(&["http://chat.example.com:8081"]);
        assert!(named.admits(
            Some("http://chat.example.com:8081"),
            Some("chat.example.com:8081"),
            false
        ));
        let listed = policy(&["https://app.example.com", "http://127.0.0.1:3000"]);
        assert!(listed.admits(
            Some("https://app.example.com"),
            Some("ws.example.com"),
            true
        ));
        assert!(listed.admits(Some("https://app.example.com:443"), Some("x"), true));
        assert!(listed.admits(Some("http://127.0.0.1:3000"), Some("127.0.0.1:8081"), false));
        assert!(!listed.admits(Some("http://127.0.0.1:3001"), Some("127.0.0.1:8081"), false));
        assert!(!listed.admits(Some("https://evil.example.com"), Some("x"), true));
        let any = policy(&["*"]);
        assert!(any.allows_any());
        assert!(any.admits(Some("https://evil.example.com"), Some("x"), false));
    }

    #[test]
    fn bad_origins_are_refused_at_start() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://x:99999",
            "https://",
        ] {
            assert!(OriginPolicy::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
