//! Who may connect: `--allow` / `--deny` address ranges and the per-address connection
//! limit (`--max-clients-per-ip`). Pure: addresses in, verdicts out; no sockets.
//!
//! Deny wins over allow; with any `--allow`, an address must match one. IPv4 addresses that
//! arrive IPv4-mapped on an IPv6 socket (`::ffff:127.0.0.1`) are judged as IPv4.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An address range: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS` or a bare address (all bits: /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = |why: &str| {
            format!(
                "'{text}' is not an address range ({why}; e.g. 10.0.0.0/8, 127.0.0.2 or ::1/128)"
            )
        };
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(bits) => match bits.parse::<u8>() {
                Ok(bits) if bits <= max => bits,
                _ => return Err(bad(&format!("the prefix must be 0 to {max}"))),
            },
        };
        // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range it maps; a shorter
        // prefix would reach past ::ffff:0:0/96 into IPv6 and back out as "all of IPv4".
        let canonical = addr.to_canonical();
        let prefix = match (addr, canonical) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix < 96 => {
                return Err(bad(
                    "an IPv4-mapped range needs a prefix of 96 or more; write IPv4 ranges as \
                     IPv4, e.g. 10.0.0.0/8",
                ));
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix - 96,
            _ => prefix,
        };
        Ok(Cidr {
            addr: canonical,
            prefix,
        })
    }

    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether the top `prefix` of `width` bits of `a` and `b` agree.
fn prefix_matches(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}

/// The `--allow` and `--deny` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl AccessList {
    /// Whether a client at `ip` may connect: not denied, and allowed if any allow is given.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|range| range.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|range| range.contains(ip)))
    }

    /// Whether any rule is given (else every address is welcome, at no cost).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Connections per client address, against `--max-clients-per-ip`. Each connection holds
/// its [`AddressPlace`] from its accept to its end, in whatever stage it is (handshake,
/// request, client, leaving): the place is given back when it is dropped, so no path that
/// ends a connection can forget it.
#[derive(Debug, Default)]
pub struct PerAddress {
    /// 0: no limit (and nothing counted).
    max: usize,
    counts: Counts,
}

/// The shared counts. A mutex rather than a `RefCell` keeps the loop `Send` (it may run on
/// a thread of its own); it is taken only at an accept and at a connection's end.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The counts, even if a panic elsewhere poisoned the lock (they are plain numbers).
fn lock(counts: &Counts) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PerAddress {
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            max,
            counts: Counts::default(),
        }
    }

    /// A place for one more connection from `ip`, unless that would pass the limit.
    #[must_use = "the place is given back as soon as it is dropped"]
    pub fn try_take(&self, ip: IpAddr) -> Option<AddressPlace> {
        if self.max == 0 {
            return Some(AddressPlace::uncounted(ip));
        }
        let ip = ip.to_canonical();
        let mut counts = lock(&self.counts);
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressPlace {
            ip,
            counts: Some(Arc::clone(&self.counts)),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One connection's place in its address's count (`--max-clients-per-ip`); given back when
/// dropped. (Were the limit ever reloaded, places taken before would still be given back
/// to the counts they came from: those of their `PerAddress`.)
#[derive(Debug)]
#[must_use = "the place is given back as soon as it is dropped"]
pub struct AddressPlace {
    ip: IpAddr,
    /// `None` when nothing is counted (no limit).
    counts: Option<Counts>,
}

impl AddressPlace {
    /// A place that counts against nothing (no limit, or a connection made in a test).
    pub fn uncounted(ip: IpAddr) -> AddressPlace {
        AddressPlace { ip, counts: None }
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else {
            return;
        };
        let mut counts = lock(counts);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.255.3")) && !net.contains(ip("10.2.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        let host = Cidr::parse("127.0.0.2").unwrap();
        assert!(host.contains(ip("127.0.0.2")) && !host.contains(ip("127.0.0.3")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("::ffff:1.2.3.4/64").is_err(), "not all of IPv4");
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.9.8.7")) && !mapped.contains(ip("11.0.0.1")));
        for bad in ["10.0.0.0/33", "::1/129", "example.com", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_allow_narrows() {
        let list = AccessList {
            allow: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            deny: vec![Cidr::parse("127.0.0.3").unwrap()],
        };
        assert!(list.permits(ip("127.0.0.2")));
        assert!(!list.permits(ip("127.0.0.3")), "deny wins");
        assert!(!list.permits(ip("192.0.2.1")), "not allowed");
        assert!(AccessList::default().permits(ip("192.0.2.1")));
    }

    #[test]
    fn per_address_places_count_up_to_the_limit_and_are_given_back_when_dropped() {
        let limit = PerAddress::new(2);
        let first = limit.try_take(ip("127.0.0.2")).unwrap();
        let second = limit.try_take(ip("127.0.0.2")).unwrap();
        assert!(
            limit.try_take(ip("::ffff:127.0.0.2")).is_none(),
            "the same address, mapped"
        );
        let other = limit.try_take(ip("127.0.0.3")).unwrap();
        drop(first);
        let again = limit.try_take(ip("127.0.0.2"));
        assert!(again.is_some());
        drop(other);
        assert!(
            !lock(&limit.counts).contains_key(&ip("127.0.0.3")),
            "no entry left behind"
        );
        drop((second, again));
        assert!(lock(&limit.counts).is_empty());
        let unlimited = PerAddress::new(0);
        let places: Vec<_> = (0..100)
            .map(|_| unlimited.try_take(ip("127.0.0.2")))
            .collect();
        assert!(places.iter().all(Option::is_some));
        assert!(lock(&unlimited.counts).is_empty(), "nothing counted");
    }
}
