//! What a certificate's name says about its holder.
//!
//! Every certificate `tanvrit tls` makes carries one DNS name of the form
//! `<role>-<name>.<cluster-id>.tanvrit` (Nomad's `server.<region>.nomad`), so a verifier
//! can tell a replica from an agent from an operator, and one cluster from another:
//!
//! | name | holder |
//! |---|---|
//! | `replica-<raft id>.<cluster>.tanvrit` | a replica; admitted to replica RPC while a member |
//! | `agent-<node>.<cluster>.tanvrit` | an agent running node `<node>` |
//! | `client-<name>.<cluster>.tanvrit` | an operator or a tenant's program on the API |
//!
//! A client certificate also carrying the URI name `tanvrit:business:<business>` acts
//! as a `user` of that business; without it, as an `admin`.

/// The top-level label of every name.
pub const SUFFIX: &str = "tanvrit";
/// The URI prefix naming a client certificate's business.
pub const BUSINESS_URI_PREFIX: &str = "tanvrit:business:";

/// Who a certificate names, within one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerName {
    /// A replica, by Raft id.
    Replica(u64),
    /// An agent, by node name.
    Agent(String),
    /// An API client, by name.
    Client(String),
}

impl PeerName {
    /// The DNS name for this holder in `cluster`.
    pub fn dns_name(&self, cluster: &str) -> String {
        match self {
            PeerName::Replica(id) => format!("replica-{id}.{cluster}.{SUFFIX}"),
            PeerName::Agent(node) => format!("agent-{node}.{cluster}.{SUFFIX}"),
            PeerName::Client(name) => format!("client-{name}.{cluster}.{SUFFIX}"),
        }
    }

    /// Reads a DNS name of `cluster`; `None` for any other name (another cluster's, a
    /// host name, a malformed one).
    pub fn parse(dns_name: &str, cluster: &str) -> Option<PeerName> {
        let label = dns_name
            .strip_suffix(SUFFIX)?
            .strip_suffix('.')?
            .strip_suffix(cluster)?
            .strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        let (role, name) = label.split_once('-')?;
        if name.is_empty() {
            return None;
        }
        match role {
            "replica" => name.parse().ok().map(PeerName::Replica),
            "agent" => Some(PeerName::Agent(name.to_string())),
            "client" => Some(PeerName::Client(name.to_string())),
            _ => None,
        }
    }
}

/// Refuses a name part that cannot be a DNS label: letters, digits and `-`, 1 to 63
/// characters, not starting or ending with `-`. `what` names it in the message.
pub fn check_label(what: &str, value: &str) -> Result<(), crate::TlsError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(crate::TlsError::InvalidName(format!(
            "{what} `{value}` cannot go into a certificate name: use letters, digits and \
             `-` (at most 63, not starting or ending with `-`)"
        )))
    }
}

/// Checks a cluster id: one or more DNS labels.
pub fn check_cluster(cluster: &str) -> Result<(), crate::TlsError> {
    cluster
        .split('.')
        .try_for_each(|label| check_label("cluster id", label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_within_their_cluster_only() {
        for name in [
            PeerName::Replica(2),
            PeerName::Agent("n1".into()),
            PeerName::Client("ops".into()),
        ] {
            let dns = name.dns_name("prod");
            assert_eq!(PeerName::parse(&dns, "prod"), Some(name));
            assert_eq!(PeerName::parse(&dns, "staging"), None);
        }
        assert_eq!(
            PeerName::dns_name(&PeerName::Replica(3), "eu.prod"),
            "replica-3.eu.prod.tanvrit"
        );
        assert_eq!(
            PeerName::parse("replica-3.eu.prod.tanvrit", "eu.prod"),
            Some(PeerName::Replica(3))
        );
    }

    #[test]
    fn other_names_name_nobody() {
        for dns in [
            "localhost",
            "replica-x.prod.tanvrit",
            "replica-.prod.tanvrit",
            "server-1.prod.tanvrit",
            "a.replica-1.prod.tanvrit",
            "replica-1.prod.tanvrit.evil",
            "replica-1prod.tanvrit",
        ] {
            assert_eq!(PeerName::parse(dns, "prod"), None, "{dns}");
        }
    }

    #[test]
    fn labels_that_dns_cannot_carry_are_refused() {
        assert!(check_label("node", "node-1").is_ok());
        for bad in ["", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(check_label("node", bad).is_err(), "{bad}");
        }
        assert!(check_cluster("eu.prod").is_ok());
        assert!(check_cluster("eu..prod").is_err());
    }
}
