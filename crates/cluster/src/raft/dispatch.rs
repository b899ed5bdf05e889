//! Answers replica RPC, whichever way it came (the HTTP listener in `server`, or an
//! in-process transport through `RaftCluster::handle_rpc`): one `match` over the
//! messages of `rpc`, each handed to the module of its concern.
//!
//! Raft's own messages also feed the failure detector here: an accepted AppendEntries
//! or snapshot chunk is contact with a leader, a granted vote is an election under way.

use std::time::Instant;

use openraft::raft::AppendEntriesResponse;

use crate::raft::node::Node;
use crate::raft::rpc::{Rpc, RpcReply};
use crate::raft::types::NodeId;

impl Node {
    /// Answers one replica RPC.
    pub async fn handle_rpc(&self, from: Option<NodeId>, rpc: Rpc) -> RpcReply {
        tracing::trace!(?from, kind = ?rpc.kind(), "replica rpc");
        match rpc {
            Rpc::AppendEntries(request) => {
                let result = self.raft.append_entries(request).await;
                if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.detector.lock().last_leader_contact = Some(Instant::now());
                }
                RpcReply::AppendEntries(result)
            }
            Rpc::Vote(request) => {
                if let Some(refusal) = self.refuse_vote(&request) {
                    return RpcReply::Vote(Ok(refusal));
                }
                let result = self.raft.vote(request).await;
                if matches!(&result, Ok(r) if r.vote_granted) {
                    self.detector.lock().last_vote_granted = Some(Instant::now());
                }
                RpcReply::Vote(result)
            }
            Rpc::InstallSnapshot(request) => {
                let result = self.raft.install_snapshot(request).await;
                if result.is_ok() {
                    self.detector.lock().last_leader_contact = Some(Instant::now());
                }
                RpcReply::InstallSnapshot(result)
            }
            Rpc::ForwardWrite(command) => {
                RpcReply::ForwardWrite(self.forwarded_write(command).await)
            }
            Rpc::ReadIndex => RpcReply::ReadIndex(self.read_index_here().await),
            Rpc::Status => RpcReply::Status(Box::new(self.status())),
            Rpc::HandOff(hand_off) => {
                self.successor_named(hand_off);
                RpcReply::HandOff
            }
            Rpc::Membership(change) => {
                RpcReply::Membership(self.change_membership_here(change).await)
            }
        }
    }
}
