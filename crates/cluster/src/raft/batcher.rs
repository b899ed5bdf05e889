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

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use tanvrit_state::Command;
use tokio::sync::{mpsc, oneshot, watch};

use crate::raft::monitor::stopped;
use crate::raft::node::{fatal, Node};
use crate::raft::rpc::LeaderError;
use crate::raft::types::{NodeId, WriteRequest};
use crate::{ClusterError, Receipt};

/// One write waiting for the leader's next entry.
pub(crate) struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Receipt, LeaderError>>,
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
    node: Arc<Node>,
    mut queue: mpsc::Receiver<Proposal>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = node.config.writes_in_flight.max(1);
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
                let (batch, rest) = fill(&node, first, &mut queue);
                carry = rest;
                if !batch.is_empty() {
                    in_flight.push(commit(&node, batch));
                }
            }
        }
    }
}

/// The entry `first` opens: it and whatever else is queued, within the limits. Returns
/// the proposals to write and the one that would have passed the byte budget.
fn fill(
    node: &Node,
    first: (Proposal, usize),
    queue: &mut mpsc::Receiver<Proposal>,
) -> (Vec<Proposal>, Option<(Proposal, usize)>) {
    let max_commands = node.config.write_batch_max_commands.max(1);
    let max_bytes = node.config.write_batch_max_bytes;
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some((proposal, size)) = next.take() {
        if !batch.is_empty() && bytes + size > max_bytes {
            return (batch, Some((proposal, size)));
        }
        // A caller that gave up (timed out, lost the leader, dropped its request) is not
        // proposed: it was told the write may not have happened, so it will not.
        if !proposal.reply.is_closed() {
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
async fn commit(node: &Node, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    node.counters.write_entries.fetch_add(1, Ordering::Relaxed);
    node.counters
        .write_entry_commands
        .fetch_add(count as u64, Ordering::Relaxed);
    let result = node.raft.client_write(WriteRequest { commands }).await;
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
        Err(err) => answer_all(replies, leader_error(err)),
    }
}

fn answer_all(replies: Vec<oneshot::Sender<Result<Receipt, LeaderError>>>, error: LeaderError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

fn leader_error(
    err: RaftError<NodeId, ClientWriteError<NodeId, crate::raft::ReplicaNode>>,
) -> LeaderError {
    match err {
        // Not in the log (never proposed, or truncated by a new leader): retry-safe.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => LeaderError::Failed {
            error: ClusterError::Internal(e.to_string()),
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
