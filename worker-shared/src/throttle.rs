//! Failed authentications, counted per peer across its connections: past the limit within a
//! window, a peer's proofs are not checked until the window ends.
//!
//! A peer is its user for a Unix socket (every process of one user is one peer), its IPv4
//! address, or its IPv6 `/64` (the smallest block a site is given, so an attacker with one
//! network counts once). The table holds at most [`MAX_PEERS`] peers, forgetting those whose
//! window ended when it is full; peers beyond that, while all of those are recent, share one
//! window, so many addresses cannot grow it without bound nor buy more guesses than one peer
//! gets.
//!
//! Pure: the time comes in as an argument, so tests can fix it.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::Peer;

/// Failed authentications a peer may make within one window.
pub(crate) const MAX_FAILURES: u32 = 100;

/// The window failures are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The most peers the table tracks one by one.
pub(crate) const MAX_PEERS: usize = 4096;

/// Who a failure is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    /// A Unix peer, by user id.
    Uid(u32),
    /// A TCP peer, by address (IPv6: its `/64`).
    Ip(IpAddr),
}

impl PeerKey {
    pub(crate) fn of(peer: &Peer) -> Self {
        match peer {
            Peer::Unix { uid, .. } => PeerKey::Uid(*uid),
            Peer::Tcp(addr) => match addr.ip() {
                IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                    Some(v4) => PeerKey::Ip(IpAddr::V4(v4)),
                    None => {
                        let prefix = u128::from(ip) & !((1u128 << 64) - 1);
                        PeerKey::Ip(IpAddr::V6(prefix.into()))
                    }
                },
                ip => PeerKey::Ip(ip),
            },
        }
    }
}

/// One peer's current window.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    failures: u32,
    /// Whether the refusals of this window were logged already.
    logged: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            start: now,
            failures: 0,
            logged: false,
        }
    }

    fn end(&self) -> Instant {
        // `WINDOW` is one second: no instant a clock gives is that close to the end of time.
        self.start + WINDOW
    }

    fn is_over(&self, now: Instant) -> bool {
        now >= self.end()
    }
}

/// What the throttle says about a peer about to have a proof checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Check it.
    Check,
    /// Do not: answer once `until` has come. `log` the first time in the window.
    Refuse { until: Instant, log: bool },
}

/// The failed authentications of every peer.
#[derive(Debug)]
pub(crate) struct Throttle {
    peers: HashMap<PeerKey, Window>,
    /// The window of the peers that found the table full.
    overflow: Window,
    max_peers: usize,
}

impl Throttle {
    pub(crate) fn new(now: Instant) -> Self {
        Self::with_max_peers(now, MAX_PEERS)
    }

    fn with_max_peers(now: Instant, max_peers: usize) -> Self {
        Throttle {
            peers: HashMap::new(),
            overflow: Window::new(now),
            max_peers,
        }
    }

    /// The window `key` counts in, current at `now`; `None` for a peer that never failed
    /// lately and for whom `create` is false.
    fn window(&mut self, key: PeerKey, now: Instant, create: bool) -> Option<&mut Window> {
        if !self.peers.contains_key(&key) {
            if !create {
                return None;
            }
            if self.peers.len() >= self.max_peers {
                self.peers.retain(|_, w| !w.is_over(now));
            }
            if self.peers.len() >= self.max_peers {
                if self.overflow.is_over(now) {
                    self.overflow = Window::new(now);
                }
                return Some(&mut self.overflow);
            }
        }
        let window = self.peers.entry(key).or_insert_with(|| Window::new(now));
        if window.is_over(now) {
            *window = Window::new(now);
        }
        Some(window)
    }

    /// Whether a proof from `key` may be checked at `now`.
    pub(crate) fn verdict(&mut self, key: PeerKey, now: Instant) -> Verdict {
        let overflowed = !self.peers.contains_key(&key) && self.peers.len() >= self.max_peers;
        let window = if overflowed {
            if self.overflow.is_over(now) {
                return Verdict::Check;
            }
            &mut self.overflow
        } else {
            match self.window(key, now, false) {
                Some(window) => window,
                None => return Verdict::Check,
            }
        };
        if window.failures < MAX_FAILURES {
            return Verdict::Check;
        }
        let log = !std::mem::replace(&mut window.logged, true);
        Verdict::Refuse {
            until: window.end(),
            log,
        }
    }

    /// Counts a failed authentication of `key` at `now`.
    pub(crate) fn failed(&mut self, key: PeerKey, now: Instant) {
        if let Some(w) = self.window(key, now, true) {
            w.failures = w.failures.saturating_add(1);
        }
    }

    /// How many peers are tracked one by one.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;

    fn v4(n: u32) -> PeerKey {
        PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(n)))
    }

    /// Fails `key` until it is refused; returns how many checks it got, and the refusal.
    fn checks_until_refused(throttle: &mut Throttle, key: PeerKey, now: Instant) -> (u32, Verdict) {
        let mut checks = 0;
        loop {
            match throttle.verdict(key, now) {
                Verdict::Check => {
                    checks += 1;
                    throttle.failed(key, now);
                    assert!(checks <= 10 * MAX_FAILURES, "never refused");
                }
                refused => return (checks, refused),
            }
        }
    }

    #[test]
    fn a_peer_gets_100_checks_a_window_and_one_log_line() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(t0);
        let key = PeerKey::Uid(1000);
        assert_eq!(
            checks_until_refused(&mut throttle, key, t0),
            (
                MAX_FAILURES,
                Verdict::Refuse {
                    until: t0 + WINDOW,
                    log: true
                }
            )
        );
        let later = t0 + WINDOW / 2;
        assert_eq!(
            throttle.verdict(key, later),
            Verdict::Refuse {
                until: t0 + WINDOW,
                log: false
            }
        );
        // Another peer is not held back by this one.
        assert_eq!(throttle.verdict(PeerKey::Uid(1001), later), Verdict::Check);
        // The next window starts afresh.
        let next = t0 + WINDOW;
        assert_eq!(
            checks_until_refused(&mut throttle, key, next),
            (
                MAX_FAILURES,
                Verdict::Refuse {
                    until: next + WINDOW,
                    log: true
                }
            )
        );
    }

    #[test]
    fn many_addresses_neither_grow_the_table_nor_buy_more_guesses() {
        let t0 = Instant::now();
        let mut throttle = Throttle::with_max_peers(t0, 64);
        // 64 peers fill the table, each with one failure.
        for n in 0..64 {
            throttle.failed(v4(n), t0);
        }
        // 100 000 more addresses share one window: 100 checks in all, not 100 each.
        let mut checks = 0;
        for n in 64..100_064 {
            if throttle.verdict(v4(n), t0) == Verdict::Check {
                checks += 1;
                throttle.failed(v4(n), t0);
            }
        }
        assert_eq!(checks, MAX_FAILURES);
        assert_eq!(throttle.tracked(), 64);
        // Once the tracked windows are over, new peers get a window of their own again.
        let next = t0 + WINDOW;
        throttle.failed(v4(1_000_000), next);
        assert_eq!(throttle.tracked(), 1);
        assert_eq!(throttle.verdict(v4(1_000_001), next), Verdict::Check);
    }

    #[test]
    fn peers_are_users_ipv4_addresses_and_ipv6_networks() {
        let tcp = |ip: IpAddr, port| PeerKey::of(&Peer::Tcp(SocketAddr::new(ip, port)));
        let unix = |uid| {
            PeerKey::of(&Peer::Unix {
                pid: Some(1),
                uid,
                gid: 0,
            })
        };
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        let cases = [
            (tcp(a.into(), 1), tcp(b.into(), 2), true),
            (tcp(a.into(), 1), tcp(c.into(), 1), false),
            (
                tcp(mapped.into(), 1),
                tcp(Ipv4Addr::new(192, 0, 2, 7).into(), 9),
                true,
            ),
            (
                tcp(Ipv4Addr::new(192, 0, 2, 7).into(), 1),
                tcp(Ipv4Addr::new(192, 0, 2, 8).into(), 1),
                false,
            ),
            (unix(1000), unix(1000), true),
            (unix(1000), unix(1001), false),
        ];
        for (x, y, same) in cases {
            assert_eq!(x == y, same, "{x:?} {y:?}");
        }
    }
}
