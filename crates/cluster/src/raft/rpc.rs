//! Replica-to-replica messages: Raft's own three, and the ones this crate adds
//! (forwarded writes, read index, status, hand-off, membership), with their wire form.
//!
//! On HTTP every message is `POST /raft/v1/<kind>`; the body is the message's JSON, and
//! the answer is the reply's JSON. A snapshot chunk is the exception: its bytes would
//! be a JSON array of numbers, so its body is framed as a 4-byte big-endian header
//! length, the JSON header, then the raw chunk.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tanvrit_api::{Index, Role};
use tanvrit_state::Command;

use crate::raft::types::{NodeId, ReplicaNode, SnapshotMeta, TypeConfig, Vote};
use crate::{ClusterError, Receipt};

/// Which message: also its path segment on HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RpcKind {
    /// Raft AppendEntries (and heartbeats).
    AppendEntries,
    /// Raft RequestVote.
    Vote,
    /// One chunk of a Raft snapshot.
    InstallSnapshot,
    /// A write a follower forwards to the leader.
    ForwardWrite,
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    /// A replica's own view of itself (topology, bootstrap, failure detection).
    Status,
    /// A leader that stops names its successor.
    HandOff,
    /// A membership change forwarded to the leader.
    Membership,
}

impl RpcKind {
    /// Every kind.
    pub const ALL: [RpcKind; 8] = [
        RpcKind::AppendEntries,
        RpcKind::Vote,
        RpcKind::InstallSnapshot,
        RpcKind::ForwardWrite,
        RpcKind::ReadIndex,
        RpcKind::Status,
        RpcKind::HandOff,
        RpcKind::Membership,
    ];

    /// The path segment: `/raft/v1/<segment>`.
    pub fn segment(self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "append-entries",
            RpcKind::Vote => "vote",
            RpcKind::InstallSnapshot => "install-snapshot",
            RpcKind::ForwardWrite => "forward-write",
            RpcKind::ReadIndex => "read-index",
            RpcKind::Status => "status",
            RpcKind::HandOff => "hand-off",
            RpcKind::Membership => "membership",
        }
    }

    /// The kind named by a path segment.
    pub fn from_segment(segment: &str) -> Option<RpcKind> {
        RpcKind::ALL.into_iter().find(|k| k.segment() == segment)
    }
}

/// A membership change, run by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MembershipChange {
    /// Add a replica as a learner, wait until it caught up, then make it a voter.
    Add {
        /// Its Raft id.
        id: NodeId,
        /// What to record of it.
        node: ReplicaNode,
    },
    /// Remove a replica (voter or learner) from the cluster.
    Remove {
        /// Its Raft id.
        id: NodeId,
    },
}

/// The cluster's members after a change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Voter ids.
    pub voters: Vec<NodeId>,
    /// Learner ids (non-voting members).
    pub learners: Vec<NodeId>,
    /// The log index of the membership entry.
    pub index: Index,
}

/// A leader that stops names the voter that should stand for election first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOff {
    /// The stopping leader.
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
    /// The most caught-up voter.
    pub successor: NodeId,
}

/// A replica's view of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Raft id.
    pub id: NodeId,
    /// Name, region and addresses.
    pub node: ReplicaNode,
    /// `TANVRIT_CLUSTER_ID`.
    pub cluster_id: String,
    /// Its role (a leader without a fresh quorum reports `follower`).
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Index,
    /// Commit index as this replica knows it.
    pub commit_index: Index,
    /// Applied index.
    pub applied_index: Index,
    /// The leader it follows, if any.
    pub leader: Option<NodeId>,
    /// Whether it belongs to an initialized cluster (has a membership or a log).
    pub initialized: bool,
}

/// Why a request that only the leader can serve was not served.
///
/// For a forwarded write: `NotLeader` means nothing was proposed (the receiver does not
/// lead, stopped leading, or gave up before the write joined an entry), so the follower
/// may send it elsewhere. `Failed` with [`ClusterError::OutcomeUnknown`] means it may be
/// in the log. Replicas of this version never answer a forwarded write with `Failed`
/// carrying `NoLeader` or `ShuttingDown`; older ones did, also after proposing, so a
/// follower reads those as outcome unknown (see `node::from_leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaderError {
    /// The receiver is not the leader; nothing was proposed. Ask `leader` instead.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// The leader tried and failed; `error` says whether the write may have been applied.
    Failed {
        /// Why.
        error: ClusterError,
    },
}

/// A replica-to-replica request.
#[derive(Debug)]
pub enum Rpc {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A forwarded write.
    ForwardWrite(Command),
    /// The leader's read index.
    ReadIndex,
    /// The receiver's status.
    Status,
    /// A stopping leader's successor.
    HandOff(HandOff),
    /// A forwarded membership change.
    Membership(MembershipChange),
}

/// The answer to an [`Rpc`] of the same kind.
#[derive(Debug)]
pub enum RpcReply {
    /// Answer to AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to RequestVote.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to a snapshot chunk.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to a forwarded write.
    ForwardWrite(Result<Receipt, LeaderError>),
    /// The leader's read index.
    ReadIndex(Result<Index, LeaderError>),
    /// The receiver's status.
    Status(Box<ReplicaStatus>),
    /// Hand-off noted.
    HandOff,
    /// Answer to a membership change.
    Membership(Result<MembershipView, LeaderError>),
}

/// A body that does not decode as the message its path names.
#[derive(Debug, thiserror::Error)]
#[error("malformed {kind:?} body: {detail}")]
pub struct WireError {
    /// The message kind.
    pub kind: RpcKind,
    /// The decoder's complaint.
    pub detail: String,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote,
    meta: SnapshotMeta,
    offset: u64,
    done: bool,
}

#[derive(Serialize, Deserialize)]
struct Empty {}

fn json<T: Serialize>(kind: RpcKind, value: &T) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(value).map_err(|e| WireError {
        kind,
        detail: e.to_string(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(kind: RpcKind, bytes: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|e| WireError {
        kind,
        detail: e.to_string(),
    })
}

impl Rpc {
    /// The message kind.
    pub fn kind(&self) -> RpcKind {
        match self {
            Rpc::AppendEntries(_) => RpcKind::AppendEntries,
            Rpc::Vote(_) => RpcKind::Vote,
            Rpc::InstallSnapshot(_) => RpcKind::InstallSnapshot,
            Rpc::ForwardWrite(_) => RpcKind::ForwardWrite,
            Rpc::ReadIndex => RpcKind::ReadIndex,
            Rpc::Status => RpcKind::Status,
            Rpc::HandOff(_) => RpcKind::HandOff,
            Rpc::Membership(_) => RpcKind::Membership,
        }
    }

    /// The HTTP body.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let kind = self.kind();
        match self {
            Rpc::AppendEntries(r) => json(kind, r),
            Rpc::Vote(r) => json(kind, r),
            Rpc::InstallSnapshot(r) => {
                let header = json(
                    kind,
                    &SnapshotHeader {
                        vote: r.vote,
                        meta: r.meta.clone(),
                        offset: r.offset,
                        done: r.done,
                    },
                )?;
                let len = u32::try_from(header.len()).map_err(|_| WireError {
                    kind,
                    detail: "snapshot header too large".into(),
                })?;
                let mut body = Vec::with_capacity(4 + header.len() + r.data.len());
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(&header);
                body.extend_from_slice(&r.data);
                Ok(body)
            }
            Rpc::ForwardWrite(c) => json(kind, c),
            Rpc::ReadIndex | Rpc::Status => json(kind, &Empty {}),
            Rpc::HandOff(h) => json(kind, h),
            Rpc::Membership(m) => json(kind, m),
        }
    }

    /// Decodes the HTTP body of a `kind` message.
    pub fn decode(kind: RpcKind, body: &[u8]) -> Result<Rpc, WireError> {
        Ok(match kind {
            RpcKind::AppendEntries => Rpc::AppendEntries(parse(kind, body)?),
            RpcKind::Vote => Rpc::Vote(parse(kind, body)?),
            RpcKind::InstallSnapshot => {
                let short = || WireError {
                    kind,
                    detail: "truncated snapshot frame".into(),
                };
                let len_bytes: [u8; 4] = body
                    .get(..4)
                    .ok_or_else(short)?
                    .try_into()
                    .map_err(|_| short())?;
                let len = u32::from_be_bytes(len_bytes) as usize;
                let header_end = 4usize.checked_add(len).ok_or_else(short)?;
                let header: SnapshotHeader =
                    parse(kind, body.get(4..header_end).ok_or_else(short)?)?;
                Rpc::InstallSnapshot(InstallSnapshotRequest {
                    vote: header.vote,
                    meta: header.meta,
                    offset: header.offset,
                    data: body[header_end..].to_vec(),
                    done: header.done,
                })
            }
            RpcKind::ForwardWrite => Rpc::ForwardWrite(parse(kind, body)?),
            RpcKind::ReadIndex => Rpc::ReadIndex,
            RpcKind::Status => Rpc::Status,
            RpcKind::HandOff => Rpc::HandOff(parse(kind, body)?),
            RpcKind::Membership => Rpc::Membership(parse(kind, body)?),
        })
    }
}

impl RpcReply {
    /// The message kind it answers.
    pub fn kind(&self) -> RpcKind {
        match self {
            RpcReply::AppendEntries(_) => RpcKind::AppendEntries,
            RpcReply::Vote(_) => RpcKind::Vote,
            RpcReply::InstallSnapshot(_) => RpcKind::InstallSnapshot,
            RpcReply::ForwardWrite(_) => RpcKind::ForwardWrite,
            RpcReply::ReadIndex(_) => RpcKind::ReadIndex,
            RpcReply::Status(_) => RpcKind::Status,
            RpcReply::HandOff => RpcKind::HandOff,
            RpcReply::Membership(_) => RpcKind::Membership,
        }
    }

    /// The HTTP body.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let kind = self.kind();
        match self {
            RpcReply::AppendEntries(r) => json(kind, r),
            RpcReply::Vote(r) => json(kind, r),
            RpcReply::InstallSnapshot(r) => json(kind, r),
            RpcReply::ForwardWrite(r) => json(kind, r),
            RpcReply::ReadIndex(r) => json(kind, r),
            RpcReply::Status(s) => json(kind, s),
            RpcReply::HandOff => json(kind, &Empty {}),
            RpcReply::Membership(r) => json(kind, r),
        }
    }

    /// Decodes the HTTP answer to a `kind` message.
    pub fn decode(kind: RpcKind, body: &[u8]) -> Result<RpcReply, WireError> {
        Ok(match kind {
            RpcKind::AppendEntries => RpcReply::AppendEntries(parse(kind, body)?),
            RpcKind::Vote => RpcReply::Vote(parse(kind, body)?),
            RpcKind::InstallSnapshot => RpcReply::InstallSnapshot(parse(kind, body)?),
            RpcKind::ForwardWrite => RpcReply::ForwardWrite(parse(kind, body)?),
            RpcKind::ReadIndex => RpcReply::ReadIndex(parse(kind, body)?),
            RpcKind::Status => RpcReply::Status(parse(kind, body)?),
            RpcKind::HandOff => RpcReply::HandOff,
            RpcKind::Membership => RpcReply::Membership(parse(kind, body)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::raft::InstallSnapshotRequest;
    use openraft::{SnapshotMeta, Vote};

    use super::{LeaderError, Rpc, RpcKind, RpcReply};
    use crate::ClusterError;

    #[test]
    fn snapshot_chunks_are_framed_with_raw_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let rpc = Rpc::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(2, 1),
            meta: SnapshotMeta {
                snapshot_id: "s-1".into(),
                ..Default::default()
            },
            offset: 1024,
            data: data.clone(),
            done: true,
        });
        let body = rpc.encode().unwrap();
        assert_eq!(&body[body.len() - 256..], data.as_slice());
        let Rpc::InstallSnapshot(back) = Rpc::decode(RpcKind::InstallSnapshot, &body).unwrap()
        else {
            panic!("wrong kind");
        };
        assert_eq!((back.offset, back.done, back.data), (1024, true, data));
        assert_eq!(back.meta.snapshot_id, "s-1");
        assert!(Rpc::decode(RpcKind::InstallSnapshot, &body[..3]).is_err());
        assert!(Rpc::decode(RpcKind::InstallSnapshot, &[0, 0, 1, 0, b'{']).is_err());
    }

    #[test]
    fn a_forwarded_writes_answer_keeps_the_old_wire_form_and_carries_outcome_unknown() {
        // What a replica of the previous version answers; it must decode as it always did.
        let old = br#"{"Err":{"kind":"failed","error":{"NoLeader":{"retry_after":{"secs":1,"nanos":500000000},"leader":"replica-2"}}}}"#;
        let RpcReply::ForwardWrite(Err(LeaderError::Failed { error })) =
            RpcReply::decode(RpcKind::ForwardWrite, old).unwrap()
        else {
            panic!("wrong shape");
        };
        assert_eq!(
            error,
            ClusterError::NoLeader {
                retry_after: Duration::from_millis(1500),
                leader: Some("replica-2".into()),
            }
        );
        let unknown = RpcReply::ForwardWrite(Err(LeaderError::Failed {
            error: ClusterError::OutcomeUnknown {
                retry_after: Duration::from_secs(1),
                leader: None,
            },
        }));
        let body = unknown.encode().unwrap();
        let RpcReply::ForwardWrite(back) = RpcReply::decode(RpcKind::ForwardWrite, &body).unwrap()
        else {
            panic!("wrong kind");
        };
        assert_eq!(
            back.unwrap_err(),
            LeaderError::Failed {
                error: ClusterError::OutcomeUnknown {
                    retry_after: Duration::from_secs(1),
                    leader: None,
                },
            }
        );
    }

    #[test]
    fn every_kind_round_trips_through_its_path_segment() {
        for kind in RpcKind::ALL {
            assert_eq!(RpcKind::from_segment(kind.segment()), Some(kind));
        }
        assert_eq!(RpcKind::from_segment("nope"), None);
    }
}
