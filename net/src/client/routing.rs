//! Partition-aware routing: which nodes a request for a key should go to.
//!
//! Any node accepts any request, and a node outside the key's preference
//! list forwards it to a replica. A client that knows the ring saves that
//! hop by sending each request straight to a replica, which coordinates it
//! itself. [`Router`] is that decision as a pure value: built from the
//! client's seed addresses and a [`RingInfo`] a node sent, it maps a key to
//! the addresses of its preference list, in order. It does no I/O and
//! reads no clock, so the blocking client and an async one share it; when
//! to fetch a ring, and what to do when a target does not answer, are the
//! driver's (see [`Client`](super::Client)).
//!
//! Fault model: the ring may be stale or name nodes that are down, and a
//! member may advertise an address the client cannot use; none of these
//! can make a request wrong, only cost it a forward (see [`Router`], whose
//! docs are the ones users see). The router itself cannot fail: a ring
//! reaching it passed [`Ring::from_state`].
//!
//! Invariants: [`Router::targets`] returns distinct addresses, at most
//! `n` of them with a ring (the seeds without one), in preference order;
//! it is a pure function of the ring, `n`, the seeds and the key.

use std::net::SocketAddr;

use super::RingInfo;
use crate::ring::Ring;

/// Maps keys to the addresses of the nodes that should coordinate them:
/// with a ring, a key's preference list, in order; without one, the seeds.
///
/// Why: a node outside a key's preference list forwards the request to a
/// replica, and a client that sends it straight to a replica saves that
/// hop. A pure value, built from the seeds and a [`RingInfo`] a node sent,
/// so every driver (blocking, async, load generator) can share it; when to
/// fetch a ring and what to do when a target does not answer are the
/// driver's.
///
/// What it guarantees: nothing about correctness depends on it. Every node
/// coordinates or forwards whatever reaches it, so a request sent by a
/// stale ring, to a node no longer a replica or to a seed, costs one
/// forward and nothing else. What it does not do:
///
/// - know which nodes are up: a target may refuse the connection, and the
///   driver then tries the next one (never re-sending a write that may
///   have been applied);
/// - resolve host names: a member's address that is not a literal socket
///   address (`10.0.0.1:7070`, `[::1]:7070`), or is unspecified
///   (`0.0.0.0:7070`, what a node listening on every interface may
///   advertise), or has port 0, is skipped, and the key's next replica
///   (or, failing all, a seed) takes its requests;
/// - balance reads over replicas: the first reachable node of the
///   preference list (normally the partition's owner) coordinates every
///   request for the key, as Dynamo's partition-aware clients do.
///
/// ```
/// use holdfast_net::client::{RingInfo, Router};
/// use holdfast_net::ring::{Member, Ring};
///
/// let member = |id: u64| Member {
///     id,
///     addr: format!("10.0.0.{id}:7070"),
///     weight: 1,
///     zone: String::new(),
/// };
/// let ring = Ring::new(64, (1..=5).map(member).collect(), 1)?;
/// let seeds = vec!["10.0.0.1:7070".parse()?];
/// let info = RingInfo { node: 1, ring: Some(ring.clone()), n: 3, r: 2, w: 2 };
/// let router = Router::with_ring(seeds, info);
///
/// let targets = router.targets(b"cart:ada");
/// let owner = ring.owner(ring.partition_of(b"cart:ada"));
/// assert_eq!(targets.len(), 3);
/// assert_eq!(targets[0].to_string(), ring.member(owner).expect("a member").addr);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    seeds: Vec<SocketAddr>,
    routes: Option<Routes>,
}

/// A formed ring, with each member's address parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Routes {
    ring: Ring,
    /// Replicas per key, at least 1.
    n: usize,
    /// By member index (the order of [`Ring::members`]); `None` where the
    /// address is not one a client can connect to.
    addrs: Vec<Option<SocketAddr>>,
}

impl Router {
    /// A router without a ring: every key goes to the seeds.
    pub fn new(seeds: Vec<SocketAddr>) -> Router {
        Router { seeds, routes: None }
    }

    /// A router by `info`'s ring, or without one if the node that sent it
    /// has not formed its ring. An `n` of 0 (which no node should send) is
    /// taken as 1: the owner of a partition is always one of its replicas.
    pub fn with_ring(seeds: Vec<SocketAddr>, info: RingInfo) -> Router {
        let routes = info.ring.map(|ring| {
            let addrs = ring.members().iter().map(|member| parse_addr(&member.addr)).collect();
            Routes { ring, n: usize::from(info.n.max(1)), addrs }
        });
        Router { seeds, routes }
    }

    /// The addresses the client was given, for requests that have no key
    /// and for when no target of a key answers.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// The ring routed by, if any.
    pub fn ring(&self) -> Option<&Ring> {
        self.routes.as_ref().map(|routes| &routes.ring)
    }

    /// Whether the router has a ring (otherwise [`targets`](Self::targets)
    /// are always the seeds).
    pub fn is_routing(&self) -> bool {
        self.routes.is_some()
    }

    /// Where a request for `key` should go, best first: with a ring, the
    /// addresses of the key's preference list in order, skipping members
    /// whose address is unusable (see the module docs) and repeats, so
    /// possibly none; without a ring, the seeds. A driver tries them in
    /// order and falls back to the seeds when none answers.
    pub fn targets(&self, key: &[u8]) -> Vec<SocketAddr> {
        let Some(routes) = &self.routes else {
            return self.seeds.clone();
        };
        let ring = &routes.ring;
        let replicas = ring.preference_list(ring.partition_of(key), routes.n);
        let mut targets: Vec<SocketAddr> = Vec::with_capacity(replicas.len());
        for id in replicas {
            let index = ring
                .members()
                .binary_search_by_key(&id, |member| member.id)
                .expect("a preference list names members");
            if let Some(addr) = routes.addrs[index]
                && !targets.contains(&addr)
            {
                targets.push(addr);
            }
        }
        assert!(targets.len() <= routes.n);
        targets
    }

    /// Every address a request may go to: the seeds, then the ring's
    /// members' usable addresses. Distinct, in that order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = self.seeds.clone();
        let members = self.routes.iter().flat_map(|routes| routes.addrs.iter().flatten());
        for &addr in members {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }
}

/// A member's address as a client can connect to it: a literal socket
/// address with a specified IP and a port.
fn parse_addr(addr: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = addr.parse().ok()?;
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Member;

    fn member(id: u64, addr: &str) -> Member {
        Member { id, addr: addr.to_string(), weight: 1, zone: String::new() }
    }

    fn info(members: Vec<Member>, n: u8) -> RingInfo {
        let ring = Ring::new(64, members, 1).expect("a valid ring");
        RingInfo { node: 1, ring: Some(ring), n, r: 1, w: 1 }
    }

    fn seeds() -> Vec<SocketAddr> {
        vec!["127.0.0.1:9000".parse().expect("an address")]
    }

    /// The address each member id was given, parsed.
    fn addr_of(ring: &Ring, id: u64) -> SocketAddr {
        ring.member(id).expect("a member").addr.parse().expect("an address")
    }

    #[test]
    fn targets_are_the_preference_list_in_order() {
        let members = (1..=5).map(|id| member(id, &format!("10.0.0.{id}:7070"))).collect();
        let router = Router::with_ring(seeds(), info(members, 3));
        let ring = router.ring().expect("a ring").clone();
        assert!(router.is_routing());
        for key in [&b"a"[..], b"cart:ada", b"", b"key:12345"] {
            let expected: Vec<SocketAddr> = ring
                .preference_list(ring.partition_of(key), 3)
                .into_iter()
                .map(|id| addr_of(&ring, id))
                .collect();
            assert_eq!(expected.len(), 3);
            assert_eq!(router.targets(key), expected, "key {key:?}");
        }
    }

    #[test]
    fn unusable_addresses_are_skipped() {
        let members = vec![
            member(1, "10.0.0.1:7070"),
            member(2, "node-2.example:7070"),
            member(3, "0.0.0.0:7070"),
            member(4, "10.0.0.4:0"),
            member(5, "[::1]:7070"),
        ];
        let router = Router::with_ring(seeds(), info(members, 5));
        let usable: Vec<SocketAddr> =
            ["10.0.0.1:7070", "[::1]:7070"].iter().map(|a| a.parse().expect("valid")).collect();
        for key in [&b"a"[..], b"b", b"c", b"d"] {
            let targets = router.targets(key);
            assert_eq!(targets.len(), 2, "{targets:?}");
            assert!(targets.iter().all(|addr| usable.contains(addr)), "{targets:?}");
        }
        assert_eq!(router.addrs()[1..], usable);
    }

    #[test]
    fn members_sharing_an_address_are_tried_once() {
        let members = vec![member(1, "10.0.0.1:7070"), member(2, "10.0.0.1:7070")];
        let router = Router::with_ring(seeds(), info(members, 2));
        assert_eq!(router.targets(b"k"), ["10.0.0.1:7070".parse::<SocketAddr>().expect("valid")]);
    }

    #[test]
    fn without_a_ring_every_key_goes_to_the_seeds() {
        let router = Router::new(seeds());
        assert!(!router.is_routing());
        assert_eq!(router.targets(b"k"), seeds());
        let unformed = RingInfo { node: 1, ring: None, n: 3, r: 2, w: 2 };
        let router = Router::with_ring(seeds(), unformed);
        assert!(!router.is_routing());
        assert_eq!(router.targets(b"k"), seeds());
        assert_eq!(router.addrs(), seeds());
    }

    #[test]
    fn n_zero_routes_to_the_owner() {
        let members = (1..=3).map(|id| member(id, &format!("10.0.0.{id}:7070"))).collect();
        let router = Router::with_ring(seeds(), info(members, 0));
        let ring = router.ring().expect("a ring");
        let key = b"k";
        let owner = ring.owner(ring.partition_of(key));
        assert_eq!(router.targets(key), [addr_of(ring, owner)]);
    }

    #[test]
    fn n_above_the_member_count_is_every_member() {
        let members = (1..=2).map(|id| member(id, &format!("10.0.0.{id}:7070"))).collect();
        let router = Router::with_ring(seeds(), info(members, 3));
        assert_eq!(router.targets(b"k").len(), 2);
    }
}
