//! [`Faults`]: what the fault-injecting transport does to each message.
//!
//! A message from `a` to `b` is dropped when either is isolated, when they sit in
//! different groups of the current partition, when the link `a -> b` is cut, or by the
//! loss rate; otherwise it is delayed by a random time in the delay range. Replies are
//! subject to the same rules in the other direction, so a cut link may lose a request
//! or only its answer. Randomness comes from a seeded generator (repeatable runs).
//! It also counts the requests sent to each replica, by kind, whatever their fate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tanvrit_cluster::raft::{NodeId, RpcKind};

#[derive(Default)]
struct Switches {
    isolated: BTreeSet<NodeId>,
    groups: BTreeMap<NodeId, usize>,
    cut: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
    delay: Option<(Duration, Duration)>,
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered after this delay.
    Deliver(Duration),
    /// Lost.
    Drop,
}

/// The fault switches of one test cluster. Cheap to share (`Arc`).
pub struct Faults {
    switches: Mutex<Switches>,
    rng: Mutex<StdRng>,
    sent: Mutex<HashMap<(NodeId, RpcKind), u64>>,
}

impl Faults {
    /// No faults; `seed` drives loss and delay.
    pub fn new(seed: u64) -> Self {
        Self {
            switches: Mutex::new(Switches::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `kind` sent to `to` (the transport calls it).
    pub fn record(&self, to: NodeId, kind: RpcKind) {
        *self.sent.lock().entry((to, kind)).or_default() += 1;
    }

    /// How many requests of `kind` were sent to `to` so far, delivered or not.
    pub fn sent_to(&self, to: NodeId, kind: RpcKind) -> u64 {
        self.sent.lock().get(&(to, kind)).copied().unwrap_or(0)
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.switches.lock().isolated.insert(id);
    }

    /// Splits the replicas into groups that cannot reach each other (replicas in no
    /// group reach everyone).
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut s = self.switches.lock();
        s.groups.clear();
        for (group, ids) in groups.iter().enumerate() {
            for id in *ids {
                s.groups.insert(*id, group);
            }
        }
    }

    /// Cuts the one-way link `from -> to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.switches.lock().cut.insert((from, to));
    }

    /// Loses each message with probability `p` (0 to 1).
    pub fn set_loss(&self, p: f64) {
        self.switches.lock().loss = p.clamp(0.0, 1.0);
    }

    /// Delays each delivered message by a uniform time in `[min, max]`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.switches.lock().delay = Some((min, max.max(min)));
    }

    /// Removes isolation, partitions and cut links (loss and delay stay).
    pub fn heal(&self) {
        let mut s = self.switches.lock();
        s.isolated.clear();
        s.groups.clear();
        s.cut.clear();
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.switches.lock() = Switches::default();
    }

    /// Whether `from` can reach `to` at all right now (ignoring loss).
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        let s = self.switches.lock();
        !(s.isolated.contains(&from)
            || s.isolated.contains(&to)
            || s.cut.contains(&(from, to))
            || matches!((s.groups.get(&from), s.groups.get(&to)), (Some(a), Some(b)) if a != b))
    }

    /// Decides the fate of one message `from -> to`.
    pub fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        if !self.connected(from, to) {
            return Fate::Drop;
        }
        let (loss, delay) = {
            let s = self.switches.lock();
            (s.loss, s.delay)
        };
        let mut rng = self.rng.lock();
        if loss > 0.0 && rng.random::<f64>() < loss {
            return Fate::Drop;
        }
        match delay {
            Some((min, max)) if max > min => Fate::Deliver(rng.random_range(min..=max)),
            Some((min, _)) => Fate::Deliver(min),
            None => Fate::Deliver(Duration::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Fate, Faults};

    #[test]
    fn partitions_isolation_and_cuts_decide_reachability() {
        let f = Faults::new(1);
        assert_eq!(f.fate(1, 2), Fate::Deliver(Duration::ZERO));
        f.partition(&[&[1, 2], &[3]]);
        assert!(f.connected(1, 2));
        assert!(!f.connected(1, 3) && !f.connected(3, 2));
        f.heal();
        f.isolate(2);
        assert!(!f.connected(1, 2) && !f.connected(2, 3) && f.connected(1, 3));
        f.heal();
        f.cut(1, 3);
        assert!(!f.connected(1, 3) && f.connected(3, 1));
        f.heal();
        assert!(f.connected(1, 3));
    }

    #[test]
    fn loss_and_delay_follow_the_settings() {
        let f = Faults::new(7);
        f.set_loss(1.0);
        assert_eq!(f.fate(1, 2), Fate::Drop);
        f.set_loss(0.0);
        f.set_delay(Duration::from_millis(5), Duration::from_millis(9));
        for _ in 0..50 {
            let Fate::Deliver(d) = f.fate(1, 2) else {
                panic!("lost without loss");
            };
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(9));
        }
        let lossy = Faults::new(7);
        lossy.set_loss(0.5);
        let dropped = (0..1000).filter(|_| lossy.fate(1, 2) == Fate::Drop).count();
        assert!((350..650).contains(&dropped), "{dropped} of 1000 dropped");
    }
}
