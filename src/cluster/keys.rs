//! Every Redis key and channel name Belay uses, in one place. Each carries a hash tag (`{..}`),
//! so a Redis Cluster places what one script or one subscription touches in one slot: a user's
//! presence in the user's slot, a node's channel and index in the node's slot.

use crate::domain::UserId;

/// Names under one prefix (`cluster.key_prefix`), for one node.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    node: String,
}

impl Keys {
    pub fn new(prefix: &str, node: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The channel a node listens on: events for users it holds, and its own probes.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{{{}:node:{node}}}:events", self.prefix)
    }

    pub fn own_channel(&self) -> String {
        self.node_channel(&self.node)
    }

    /// The one channel every node listens on: broadcasts and resync requests.
    pub fn broadcast_channel(&self) -> String {
        format!("{{{}:broadcast}}", self.prefix)
    }

    /// Hash of a user's live sessions: field = node id, value = `count:expires_at_ms:change`.
    pub fn user_sessions(&self, user: &UserId) -> String {
        format!("{{{}:user:{user}}}:sessions", self.prefix)
    }

    /// Set of the users a node has presence entries for, so a restarted node can clear them.
    pub fn node_users(&self, node: &str) -> String {
        format!("{{{}:node:{node}}}:users", self.prefix)
    }
}

/// The hash tag of a key: the part a Redis Cluster hashes to pick the slot.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&n| n > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_channel_and_index_share_its_slot_and_users_spread() {
        let keys = Keys::new("t1", "n1");
        assert_eq!(
            hash_tag(&keys.own_channel()),
            hash_tag(&keys.node_users("n1"))
        );
        let ana = UserId::parse("ana").unwrap();
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(hash_tag(&keys.user_sessions(&ana)), "t1:user:ana");
        assert_ne!(
            hash_tag(&keys.user_sessions(&ana)),
            hash_tag(&keys.user_sessions(&bob))
        );
        assert_eq!(hash_tag(&keys.broadcast_channel()), "t1:broadcast");
        assert!(keys.node_channel("n2").starts_with("{t1:"));
    }
}
