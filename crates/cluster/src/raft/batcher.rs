//! The leader's write batcher: packs the writes queued on this replica (its own and the
//! ones followers forwarded) into one log entry per `client_write`.
//!
//! Why: openraft 0.9 appends (and so fsyncs) the log once per `client_write` and the
//! core loop waits for that flush before it takes the next one, so one command per entry
//! costs one fsync and one replication round per write. Here, while up to
//! `writes_in_flight` entries are being flushed, replicated and applied, every write that
//! arrives waits in a queue; the next entry takes all of them (up to
//! `write_batch_max_commands` commands and `write_batch_max_bytes` bytes). A lone write
//! on an idle leader is proposed at once, with no added delay.
//!
//! Each caller gets its own outcome and a receipt carrying the entry's index, so a
//! `min_index` read at that index sees the write. A rejected command has its own
//! rejection; the commands after it in the entry are applied as usual.
//!
//! Which failures are definite: a proposal's [`Claim`] records whether it was handed to
//! openraft. Until then its caller may withdraw it (nothing is proposed: the caller may
//! say `NoLeader` or try elsewhere); from then on every failure short of a commit is
//! [`ClusterError::OutcomeUnknown`], because the entry may be in the log and a new
//! leader may commit it.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use tanvrit_state::Command;
use tokio::sync::{mpsc, oneshot, watch};

use crate::raft::config::RaftClusterConfig;
use crate::raft::monitor::stopped;
use crate::raft::rpc::LeaderError;
use crate::raft::stats::Counters;
use crate::raft::types::{fatal, NodeId, Raft, ReplicaNode, WriteRequest};
use crate::{ClusterError, Receipt};

/// The replica as the batcher sees it: whether it leads, the Raft handle entries are
/// proposed on, and the counters they are added to. `Node` implements it; the batcher
/// knows nothing else of the replica, so the replica can hold the batcher's queue
/// without the two depending on each other.
pub(crate) trait Leader: Send + Sync {
    /// Whether this replica leads with a fresh quorum.
    fn is_leader(&self) -> bool;
    /// The leader to name to callers whose writes were not proposed.
    fn leader(&self) -> Option<NodeId>;
    /// The failure of a write that may be in the log.
    fn outcome_unknown(&self) -> ClusterError;
    /// The openraft handle entries are proposed on.
    fn raft(&self) -> &Raft;
    /// The replica's counters (entries and their commands are counted here).
    fn counters(&self) -> &Counters;
}

/// How much the batcher may take on, from the replica's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Entries in flight at once (`writes_in_flight`).
    pub in_flight: usize,
    /// Commands per entry (`write_batch_max_commands`).
    pub max_commands: usize,
    /// Bytes of commands per entry (`write_batch_max_bytes`).
    pub max_bytes: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &RaftClusterConfig) -> Self {
        Limits {
            in_flight: config.writes_in_flight,
            max_commands: config.write_batch_max_commands,
            max_bytes: config.write_batch_max_bytes,
        }
    }
}

/// One write waiting for the leader's next entry.
pub(crate) struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Receipt, LeaderError>>,
    /// Shared with the caller: settles whether the command reached openraft.
    pub claim: Arc<Claim>,
}

/// Whether a queued write was handed to openraft, settled once by whoever comes first:
/// the batcher, right before `client_write`, or the caller, giving up.
#[derive(Debug, Default)]
pub(crate) struct Claim(AtomicU8);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Claim {
    /// The batcher hands the command to openraft; `false` if its caller withdrew it.
    pub fn take(&self) -> bool {
        self.settle(TAKEN)
    }

    /// The caller gives up; `false` if the command was already handed to openraft
    /// (it may be in the log and may still commit).
    pub fn withdraw(&self) -> bool {
        self.settle(WITHDRAWN)
    }

    /// Whether the command was handed to openraft.
    pub fn taken(&self) -> bool {
        self.0.load(Ordering::SeqCst) == TAKEN
    }

    /// Whether the caller withdrew the command.
    fn withdrawn(&self) -> bool {
        self.0.load(Ordering::SeqCst) == WITHDRAWN
    }

    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// How many proposals may wait in the queue per command an entry can take; past that,
/// callers wait to enqueue (back-pressure instead of an unbounded queue).
const QUEUE_ENTRIES: usize = 4;

/// The queue's capacity for a replica with these limits.
pub(crate) fn queue_capacity(max_commands: usize) -> usize {
    max_commands.saturating_mul(QUEUE_ENTRIES).max(1)
}

/// Runs until `stop` (or every sender is gone): takes proposals off `queue` and proposes
/// them as batch entries, at most `writes_in_flight` at a time.
pub(crate) async fn run(
    node: Arc<dyn Leader>,
    limits: Limits,
    mut queue: mpsc::Receiver<Proposal>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = limits.in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    // A proposal that did not fit the previous entry's byte budget opens the next one.
    let mut carry: Option<(Proposal, usize)> = None;
    loop {
        let next = async {
            match carry.take() {
                Some(first) => Some(first),
                None => queue.recv().await.map(|p| {
                    let size = encoded_len(&p.command);
                    (p, size)
                }),
            }
        };
        tokio::select! {
            _ = stopped(&mut stop) => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next, if in_flight.len() < limit => {
                let Some(first) = first else { return };
                let (batch, rest) = fill(limits, first, &mut queue);
                carry = rest;
                if !batch.is_empty() {
                    in_flight.push(commit(&*node, batch));
                }
            }
        }
    }
}

/// The entry `first` opens: it and whatever else is queued, within the limits. Returns
/// the proposals to write and the one that would have passed the byte budget.
fn fill(
    limits: Limits,
    first: (Proposal, usize),
    queue: &mut mpsc::Receiver<Proposal>,
) -> (Vec<Proposal>, Option<(Proposal, usize)>) {
    let max_commands = limits.max_commands.max(1);
    let max_bytes = limits.max_bytes;
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some((proposal, size)) = next.take() {
        if !batch.is_empty() && bytes + size > max_bytes {
            return (batch, Some((proposal, size)));
        }
        // A caller that gave up (timed out, lost the leader, dropped its request) is not
        // proposed: it was told nothing was proposed, so nothing will be. (The claim
        // settles this for good in `commit`; this only keeps such callers out of the
        // entry's budget.)
        if !proposal.reply.is_closed() && !proposal.claim.withdrawn() {
            bytes += size;
            batch.push(proposal);
        }
        if batch.len() < max_commands {
            next = queue.try_recv().ok().map(|p| {
                let size = encoded_len(&p.command);
                (p, size)
            });
        }
    }
    (batch, None)
}

/// Proposes one entry and answers each of its callers.
async fn commit(node: &dyn Leader, batch: Vec<Proposal>) {
    if !node.is_leader() {
        // Leadership was lost while these waited: nothing is proposed, so each caller
        // may try the leader there is now.
        let leader = node.leader();
        for proposal in batch {
            let _ = proposal.reply.send(Err(LeaderError::NotLeader { leader }));
        }
        return;
    }
    // From here on the commands are openraft's: a caller that gives up now is told its
    // write may still commit. No await between the claims and `client_write`.
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .filter(|p| !p.reply.is_closed() && p.claim.take())
        .map(|p| (p.command, p.reply))
        .unzip();
    if commands.is_empty() {
        return;
    }
    let count = commands.len();
    node.counters()
        .write_entries
        .fetch_add(1, Ordering::Relaxed);
    node.counters()
        .write_entry_commands
        .fetch_add(count as u64, Ordering::Relaxed);
    let result = node.raft().client_write(WriteRequest { commands }).await;
    match result {
        Ok(response) if response.data.0.len() == count => {
            let index = response.log_id.index;
            for (reply, outcome) in replies.into_iter().zip(response.data.0) {
                let _ = reply.send(Ok(Receipt { outcome, index }));
            }
        }
        Ok(response) => {
            let error = LeaderError::Failed {
                error: ClusterError::Internal(format!(
                    "an entry of {count} commands was applied with {} outcomes",
                    response.data.0.len()
                )),
            };
            answer_all(replies, error);
        }
        Err(err) => answer_all(replies, leader_error(node, err)),
    }
}

fn answer_all(replies: Vec<oneshot::Sender<Result<Receipt, LeaderError>>>, error: LeaderError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// What the callers of an entry handed to openraft are told when `client_write` fails.
fn leader_error(
    node: &dyn Leader,
    err: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>,
) -> LeaderError {
    match err {
        // openraft 0.9.25 answers `ForwardToLeader` both to a write it refused up front
        // (not leader: `Engine::get_leader_handler_or_reject`) and to a pending write
        // whose appended entry a new leader's log truncated here
        // (`Command::DeleteConflictLog` in `RaftCore::run_command`). The second may
        // still commit: with five voters, another replica holding the entry can win the
        // next election and commit it. The two cannot be told apart, and leadership was
        // checked just before, so it is the second.
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => LeaderError::Failed {
            error: node.outcome_unknown(),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => LeaderError::Failed {
            error: ClusterError::Internal(e.to_string()),
        },
        // The core stopped with the entry possibly appended and sent to followers.
        RaftError::Fatal(openraft::error::Fatal::Stopped) => LeaderError::Failed {
            error: node.outcome_unknown(),
        },
        RaftError::Fatal(f) => LeaderError::Failed { error: fatal(f) },
    }
}

/// The length of a command's JSON: what it adds to an entry on disk and on the wire.
fn encoded_len(command: &Command) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Command` cannot fail (no maps with non-string keys); were it to,
    // the command is counted as empty and still bounded by the command cap.
    let _ = serde_json::to_writer(&mut count, command);
    count.0
}

#[cfg(test)]
mod tests {
    use tanvrit_api::KeyId;

    use super::*;

    #[test]
    fn a_claim_is_settled_once_by_the_batcher_or_the_caller() {
        let taken = Claim::default();
        assert!(taken.take());
        assert!(
            !taken.withdraw(),
            "handed to openraft: the caller cannot take it back"
        );
        assert!(taken.taken());

        let withdrawn = Claim::default();
        assert!(withdrawn.withdraw());
        assert!(
            !withdrawn.take(),
            "withdrawn: the batcher must leave it out"
        );
        assert!(!withdrawn.taken());
        assert!(withdrawn.withdrawn());
    }

    #[test]
    fn encoded_len_is_the_json_length() {
        let command = Command::KeyRevoke {
            key: KeyId::from("k1"),
            at: 7,
        };
        assert_eq!(
            encoded_len(&command),
            serde_json::to_vec(&command).unwrap().len()
        );
    }
}
