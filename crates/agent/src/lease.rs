//! [`Lease`]: how long the agent may run attempts without hearing from the control plane.
//!
//! The leader declares a node down once it has *received* no heartbeat from it for the
//! node TTL (it gets no new work then), and declares its attempts lost, retrying them on
//! other nodes, once it has received none for `lost_after` (at least the TTL; the
//! heartbeat's answer tells both). The agent counts the same spans from when it *sent*
//! the last heartbeat the leader acknowledged, less a [`margin`]: it starts attempts only
//! within the TTL, and keeps running them within `lost_after`. A heartbeat is received
//! after it is sent, so the agent's lease always runs out before the leader's count can:
//! an agent cut off from the control plane stops what it runs (with a grace short enough
//! to finish inside the margin) before the control plane may give that work to another
//! node. And an outage of the whole control plane shorter than `lost_after` stops
//! nothing: the agent runs on, spools what it owes, and reports when it is back.
//!
//! A lease also belongs to one registration: once the node registered again (it was
//! declared down or forgotten), a work answer from before that registration describes
//! attempts the control plane has already given up on, and starts nothing.

use std::time::Duration;

use tanvrit_client::api::Index;
use tokio::time::Instant;

/// The lease's margin for a node TTL: a fifth of it.
///
/// Safety does not depend on the heartbeat interval: the leader counts the TTL from a
/// heartbeat's receipt (or, as a new leader, from when it took over, which is later
/// still), the agent from its send, on clocks that run at the same rate to within parts
/// per million. The margin pays only for the agent's own reaction: the main loop waking
/// late on a loaded machine, and the stop itself (SIGTERM, a grace of half the margin,
/// SIGKILL, the reaping). A larger margin buys nothing more and costs work: the lease
/// also runs out during a control-plane outage the control plane itself would forgive
/// (a new leader grants every node a fresh TTL), and every attempt it stops is retried.
/// With the server's heartbeat every third of the TTL, a lease of four fifths of it
/// survives one lost heartbeat.
pub fn margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// The grace between SIGTERM and SIGKILL when the lease runs out: the configured one,
/// but at most half the margin, so the process is gone before the TTL is.
pub fn stop_grace(ttl: Duration, configured: Duration) -> Duration {
    configured.min(margin(ttl) / 2)
}

/// The agent's lease on its work. Starts out held by nobody: nothing may start before a
/// heartbeat is acknowledged (which also tells the TTL the control plane uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// When the latest acknowledged heartbeat was sent (before it was sent, to be exact:
    /// the client may retry it on another endpoint).
    sent: Option<Instant>,
    /// The node TTL the control plane last told.
    ttl: Option<Duration>,
    /// How long the control plane leaves a silent node's attempts its own, as it last
    /// told (never less than the TTL; `None` from a server that does not tell it).
    lost_after: Option<Duration>,
    /// The log index of the node's latest registration.
    registered_index: Index,
}

impl Lease {
    /// A heartbeat sent at `sent` was acknowledged by the leader, which uses `ttl` and
    /// `lost_after`. An older acknowledgement never shortens the lease.
    pub fn renew(&mut self, sent: Instant, ttl: Duration, lost_after: Option<Duration>) {
        self.ttl = Some(ttl);
        self.lost_after = lost_after.map(|lost_after| lost_after.max(ttl));
        if self.sent.is_none_or(|before| before <= sent) {
            self.sent = Some(sent);
        }
    }

    /// The control plane no longer knows the node as ready or draining (it was declared
    /// down, or deleted, or forgotten): its attempts here are no longer its own.
    pub fn revoke(&mut self) {
        self.sent = None;
    }

    /// The node registered (again) at log index `index`.
    pub fn registered(&mut self, index: Index) {
        self.registered_index = self.registered_index.max(index);
    }

    /// When the lease runs out, and running attempts must stop: `lost_after` less the
    /// margin after the send; `None` while no heartbeat is acknowledged.
    pub fn expires_at(&self) -> Option<Instant> {
        let (sent, ttl) = (self.sent?, self.ttl?);
        let hold = self.lost_after.unwrap_or(ttl);
        Some(sent + hold - margin(ttl))
    }

    /// When the node stops taking new work: the TTL less the margin after the send.
    fn takes_work_until(&self) -> Option<Instant> {
        let (sent, ttl) = (self.sent?, self.ttl?);
        Some(sent + ttl - margin(ttl))
    }

    /// True while attempts may run and start.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|expiry| now < expiry)
    }

    /// True while there is time to start an attempt: at least a [`margin`] left before
    /// the node's TTL (less the margin) runs out. Past the TTL the node is down and takes
    /// no new work; and when heartbeats are answered slowly, an acknowledgement can
    /// arrive with the time it grants nearly over: an attempt started then would run on a
    /// node the control plane is about to declare down. The next acknowledgement, if it
    /// comes sooner, starts it.
    pub fn may_start(&self, now: Instant) -> bool {
        match (self.takes_work_until(), self.ttl) {
            (Some(until), Some(ttl)) => now + margin(ttl) <= until,
            _ => false,
        }
    }

    /// True if a work answer at `index` was read after the node's latest registration.
    pub fn is_current(&self, index: Index) -> bool {
        index >= self.registered_index
    }

    /// The grace for stopping attempts when the lease runs out (see [`stop_grace`]); the
    /// configured one while no TTL is known (nothing can have started then).
    pub fn stop_grace(&self, configured: Duration) -> Duration {
        self.ttl
            .map_or(configured, |ttl| stop_grace(ttl, configured))
    }

    /// How long ago (at `now`) the latest acknowledged heartbeat was sent.
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.sent.map(|sent| now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_lease_is_held_before_a_heartbeat_is_acknowledged() {
        let lease = Lease::default();
        assert_eq!(lease.expires_at(), None);
        assert!(!lease.is_valid(Instant::now()));
    }

    #[test]
    fn the_lease_runs_from_the_heartbeats_send_for_the_ttl_less_a_fifth() {
        let sent = Instant::now();
        let mut lease = Lease::default();
        lease.renew(sent, TTL, None);
        assert_eq!(margin(TTL), ms(600));
        assert_eq!(lease.expires_at(), Some(sent + ms(2400)));
        assert!(lease.is_valid(sent + ms(2399)));
        assert!(!lease.is_valid(sent + ms(2400)));
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_secs(3));
    }

    #[test]
    fn the_lease_and_its_stop_end_before_the_leader_can_declare_the_node_down() {
        let sent = Instant::now();
        for ttl_ms in [300, 1_000, 3_000, 15_000, 120_000] {
            let ttl = ms(ttl_ms);
            for configured_grace in [ms(0), ms(100), Duration::from_secs(10)] {
                let mut lease = Lease::default();
                lease.renew(sent, ttl, None);
                let killed_by = lease.expires_at().unwrap() + lease.stop_grace(configured_grace);
                // The leader heard the heartbeat no earlier than it was sent; it declares
                // the node down only once it is *more* than a TTL silent.
                let received = sent;
                assert!(
                    killed_by < received + ttl,
                    "ttl {ttl_ms} ms: the SIGKILL comes at {:?} past the send",
                    killed_by - sent
                );
                // And what is left is the reaction time the margin is for.
                assert!(received + ttl - killed_by >= margin(ttl) / 2);
            }
        }
    }

    #[test]
    fn with_lost_after_running_attempts_are_kept_until_just_before_it_but_none_start_past_the_ttl()
    {
        let sent = Instant::now();
        let mut lease = Lease::default();
        lease.renew(sent, TTL, Some(Duration::from_secs(60)));
        assert_eq!(lease.expires_at(), Some(sent + ms(59_400)));
        assert!(lease.is_valid(sent + ms(59_399)));
        assert!(!lease.is_valid(sent + ms(59_400)));
        // Stopped (SIGKILL included) before the leader, which heard the heartbeat no
        // earlier than its send, can declare the attempts lost.
        let killed_by = lease.expires_at().unwrap() + lease.stop_grace(Duration::from_secs(10));
        assert!(killed_by < sent + Duration::from_secs(60));
        // New work only while the node is surely not down.
        assert!(lease.may_start(sent + ms(1800)));
        assert!(!lease.may_start(sent + ms(1801)));
        // A lost_after shorter than the TTL (0: today's rule) means the TTL.
        lease.renew(sent, TTL, Some(Duration::ZERO));
        assert_eq!(lease.expires_at(), Some(sent + ms(2400)));
    }

    #[test]
    fn attempts_start_only_with_at_least_the_margin_of_lease_left() {
        let sent = Instant::now();
        let mut lease = Lease::default();
        assert!(!lease.may_start(sent));
        lease.renew(sent, TTL, None);
        assert!(lease.may_start(sent));
        assert!(lease.may_start(sent + ms(1800)));
        assert!(!lease.may_start(sent + ms(1801)), "valid, but too short");
        assert!(lease.is_valid(sent + ms(1801)));
    }

    #[test]
    fn a_configured_grace_shorter_than_half_the_margin_is_kept() {
        assert_eq!(stop_grace(TTL, ms(100)), ms(100));
        assert_eq!(stop_grace(TTL, Duration::from_secs(10)), ms(300));
        let unknown = Lease::default();
        assert_eq!(unknown.stop_grace(ms(7)), ms(7));
    }

    #[test]
    fn a_late_acknowledgement_of_an_older_heartbeat_does_not_shorten_the_lease() {
        let start = Instant::now();
        let mut lease = Lease::default();
        lease.renew(start + ms(1000), TTL, None);
        lease.renew(start, TTL, None);
        assert_eq!(lease.expires_at(), Some(start + ms(3400)));
    }

    #[test]
    fn the_ttl_the_control_plane_tells_last_is_the_one_used() {
        let sent = Instant::now();
        let mut lease = Lease::default();
        lease.renew(sent, TTL, None);
        lease.renew(sent, Duration::from_secs(10), None);
        assert_eq!(lease.expires_at(), Some(sent + Duration::from_secs(8)));
    }

    #[test]
    fn a_revoked_lease_stays_invalid_until_the_next_acknowledgement() {
        let sent = Instant::now();
        let mut lease = Lease::default();
        lease.renew(sent, TTL, None);
        lease.revoke();
        assert!(!lease.is_valid(sent));
        assert_eq!(lease.silent_for(sent), None);
        lease.renew(sent + ms(10), TTL, None);
        assert!(lease.is_valid(sent + ms(10)));
        assert_eq!(lease.silent_for(sent + ms(110)), Some(ms(100)));
    }

    #[test]
    fn work_read_before_the_latest_registration_is_not_current() {
        let mut lease = Lease::default();
        assert!(lease.is_current(0));
        lease.registered(40);
        lease.registered(12);
        assert!(!lease.is_current(39));
        assert!(lease.is_current(40));
        assert!(lease.is_current(41));
    }
}
