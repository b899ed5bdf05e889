//! The event stream (`events/stream`): what changed at which log index, as frames of
//! newline-delimited JSON or Server-Sent Events.
//!
//! Every applied log entry yields zero or more [`Event`]s, derived deterministically
//! from the command and its outcome, so every replica produces the same events at the
//! same `(index, seq)` positions and a client can resume on any replica.

use serde::{Deserialize, Serialize};

use crate::{
    ApiKeyInfo, Attempt, BusinessId, Index, Job, JobId, LedgerEntry, Millis, Node, NodeId, Schedule,
};

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// A job changed state (submitted, placed, started, ended, cancelled, retried...).
    Job,
    /// An attempt (one run of a job) was placed, started or ended.
    Attempt,
    /// A worker node registered or changed state.
    Node,
    /// A schedule was created, changed, deleted, or fired a due time.
    Schedule,
    /// A ledger entry was written by an operator.
    Credit,
    /// An API key was created, revoked or bound (admin keys only).
    Key,
    /// The cluster itself: a new leader's term began, the membership changed.
    Cluster,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 7] = [
        Topic::Job,
        Topic::Attempt,
        Topic::Node,
        Topic::Schedule,
        Topic::Credit,
        Topic::Key,
        Topic::Cluster,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Job => "job",
            Topic::Attempt => "attempt",
            Topic::Node => "node",
            Topic::Schedule => "schedule",
            Topic::Credit => "credit",
            Topic::Key => "key",
            Topic::Cluster => "cluster",
        }
    }
}

impl std::str::FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|topic| topic.as_str() == s)
            .ok_or_else(|| format!("unknown topic `{s}`"))
    }
}

/// The object an event is about, as it is after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventObject {
    /// A job.
    Job(Box<Job>),
    /// One attempt of a job.
    Attempt(Box<Attempt>),
    /// A node.
    Node(Box<Node>),
    /// A key's public information (never its secret).
    Key(Box<ApiKeyInfo>),
    /// A ledger entry.
    Entry(Box<LedgerEntry>),
    /// A schedule.
    Schedule(Box<Schedule>),
}

/// One change, at one log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// The log index of the entry that made the change.
    pub index: Index,
    /// Position among the events of that index, from 0: `(index, seq)` orders every
    /// event and is the same on every replica.
    pub seq: u32,
    /// What it is about.
    pub topic: Topic,
    /// What happened, `<topic>_<new state or verb>`: `job_pending`, `job_running`,
    /// `attempt_succeeded`, `node_draining`, `schedule_fired`, `key_revoked`,
    /// `credit_entry_created`, `cluster_term_started`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The object's id (a job, attempt, node, schedule, key or ledger entry id; the term
    /// for `cluster_term_started`).
    pub id: String,
    /// The object's new state, when it has one (`running`, `draining`, `revoked`...).
    #[serde(default)]
    pub state: Option<String>,
    /// The business it belongs to, if any (nodes, the cluster and admin keys have none).
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// The job it concerns (job and attempt events, fired schedules).
    #[serde(default)]
    pub job: Option<JobId>,
    /// The node it concerns (node events, placed attempts).
    #[serde(default)]
    pub node: Option<NodeId>,
    /// When the change happened (the command's time, chosen by the server).
    pub at: Millis,
    /// The object after the change, when the entry carried it.
    #[serde(default)]
    pub object: Option<EventObject>,
}

impl Event {
    /// The stream position `index.seq`, as sent in an SSE `id:` line and accepted back
    /// in `Last-Event-ID`.
    pub fn cursor(&self) -> String {
        format!("{}.{}", self.index, self.seq)
    }
}

/// Opens an event stream (`POST /api/compute/events/stream`; `GET` takes the same fields
/// as query parameters, `topic` as a comma-separated list).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct EventStreamRequest {
    /// Resume: every event after this log index (after `(from_index, from_seq)` when
    /// `from_seq` is given), in order. Absent: events from now on. Older than this
    /// replica holds: 410 `events_compacted` with the oldest index it can resume from.
    #[serde(default)]
    pub from_index: Option<Index>,
    /// With `from_index`: the last `seq` already received at `from_index`, for a client
    /// cut off in the middle of an index.
    #[serde(default)]
    pub from_seq: Option<u32>,
    /// Only these topics (all when empty). In a query string: `topic=job,attempt`.
    #[serde(default, deserialize_with = "topics::deserialize")]
    #[cfg_attr(
        feature = "openapi",
        param(value_type = Option<String>, example = "job,attempt")
    )]
    pub topic: Vec<Topic>,
    /// Only this business's events (a user key always sees its own business only).
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// Only this job's events (its job and attempt events, and the schedule fire that
    /// created it).
    #[serde(default)]
    pub job: Option<JobId>,
    /// Only events about this node (the node's own, and attempts placed on it).
    #[serde(default)]
    pub node: Option<NodeId>,
    /// Milliseconds between heartbeats on an idle stream (100 to 60,000; 15,000 by default).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

/// One line of an NDJSON event stream (the SSE `event:` name is the variant, its `data:`
/// the inner object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventFrame {
    /// An event that passed the stream's filters.
    Event(Box<Event>),
    /// Nothing new passed the filters for a while; every event up to `index` has been
    /// considered, so resuming `from_index: index` misses nothing.
    Heartbeat {
        /// The index the stream has read through.
        index: Index,
    },
    /// The last frame of a stream the server ends: `events_lagged` (the client read too
    /// slowly and fell too far behind; resume from `index` at once), or `shutting_down`.
    End {
        /// Why, a stable code.
        code: String,
        /// Why, in words.
        message: String,
        /// Resume with `from_index` = this to miss nothing (and `from_seq` = `seq`).
        index: Index,
        /// See `index`.
        #[serde(default)]
        seq: Option<u32>,
    },
}

impl EventFrame {
    /// The SSE `event:` name of this frame.
    pub fn name(&self) -> &'static str {
        match self {
            EventFrame::Event(_) => "event",
            EventFrame::Heartbeat { .. } => "heartbeat",
            EventFrame::End { .. } => "end",
        }
    }
}

/// The error code of a resume older than a replica's retained events (410).
pub const EVENTS_COMPACTED: &str = "events_compacted";
/// The code of the final frame of a stream whose reader fell too far behind.
pub const EVENTS_LAGGED: &str = "events_lagged";

/// `topic` accepts a list or one comma-separated string (the query-string form).
mod topics {
    use serde::{Deserialize, Deserializer};

    use super::Topic;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<Topic>),
        Joined(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Topic>, D::Error> {
        match Form::deserialize(d)? {
            Form::List(list) => Ok(list),
            Form::Joined(joined) => joined
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(serde::de::Error::custom))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_from_a_list_or_a_comma_separated_string() {
        let joined: EventStreamRequest =
            serde_json::from_str(r#"{"topic":"job, attempt"}"#).unwrap();
        assert_eq!(joined.topic, vec![Topic::Job, Topic::Attempt]);
        let list: EventStreamRequest = serde_json::from_str(r#"{"topic":["node"]}"#).unwrap();
        assert_eq!(list.topic, vec![Topic::Node]);
        assert!(serde_json::from_str::<EventStreamRequest>(r#"{"topic":"jobs"}"#).is_err());
    }

    #[test]
    fn frames_are_externally_tagged_lines() {
        let line = serde_json::to_string(&EventFrame::Heartbeat { index: 7 }).unwrap();
        assert_eq!(line, r#"{"heartbeat":{"index":7}}"#);
    }
}
