//! What each persistent MQTT session of ferry subscribed: the subscription
//! identifier of every filter, and the filters the broker confirmed.
//!
//! # Invariants
//! - An identifier names one filter for ever: identifiers only grow
//!   (`next_id`) and are never given to another filter, so an identifier a
//!   broker still holds from an older config can never name the wrong route.
//! - An allocation is durable before it is used in a SUBSCRIBE
//!   ([`Store::subscription_ids`] flushes when it allocates).
//! - `subscribed` lists only filters the broker confirmed (SUBACK success)
//!   and not since confirmed gone (UNSUBACK); losing it in a crash costs at
//!   most one SUBSCRIBE or UNSUBSCRIBE sent again.
//!
//! # Layout
//! One sled tree `sessions`, keyed by the client id of the session, each
//! value a JSON [`SessionBook`]. Queue trees are `queue/...`, so this tree
//! is never taken for a queue.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

const TREE: &str = "sessions";

/// One session's subscriptions, as kept in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBook {
    /// The next identifier to hand out (1 is the first; MQTT forbids 0).
    pub next_id: u32,
    /// The identifier of every filter that has one.
    pub ids: BTreeMap<String, u32>,
    /// Filters the broker confirmed, with the identifier and QoS they were
    /// subscribed with.
    pub subscribed: BTreeMap<String, Subscribed>,
}

/// A confirmed subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub id: u32,
    pub qos: u8,
}

impl Store {
    /// The book of the session `client_id` (empty when it has none yet).
    pub fn session_book(&self, client_id: &str) -> Result<SessionBook, StoreError> {
        let tree = self.inner.db.open_tree(TREE).map_err(|e| self.error(e))?;
        let Some(value) = tree.get(client_id.as_bytes()).map_err(|e| self.error(e))? else {
            return Ok(SessionBook::default());
        };
        serde_json::from_slice(&value).map_err(|e| StoreError::Other {
            path: self.inner.path.clone(),
            detail: format!("the subscriptions kept for session {client_id:?} cannot be read: {e}"),
        })
    }

    /// The identifier of each filter, allocating (durably) those that have
    /// none yet. Identifiers of filters not asked for are kept: a broker
    /// may still hold them.
    pub fn subscription_ids(&self, client_id: &str, filters: &[String]) -> Result<BTreeMap<String, u32>, StoreError> {
        let mut book = self.session_book(client_id)?;
        let mut allocated = false;
        for filter in filters {
            if !book.ids.contains_key(filter) {
                let id = book.next_id.max(1);
                book.next_id = id + 1;
                book.ids.insert(filter.clone(), id);
                allocated = true;
            }
        }
        if allocated {
            self.put_session_book(client_id, &book)?;
            self.flush()?;
        }
        Ok(filters
            .iter()
            .filter_map(|f| book.ids.get(f).map(|id| (f.clone(), *id)))
            .collect())
    }

    /// Records what the broker confirmed for the session `client_id`.
    pub fn set_subscribed(&self, client_id: &str, subscribed: BTreeMap<String, Subscribed>) -> Result<(), StoreError> {
        let mut book = self.session_book(client_id)?;
        book.subscribed = subscribed;
        self.put_session_book(client_id, &book)
    }

    fn put_session_book(&self, client_id: &str, book: &SessionBook) -> Result<(), StoreError> {
        let tree = self.inner.db.open_tree(TREE).map_err(|e| self.error(e))?;
        let value = serde_json::to_vec(book).map_err(|e| StoreError::Other {
            path: self.inner.path.clone(),
            detail: format!("cannot encode the subscriptions of session {client_id:?}: {e}"),
        })?;
        tree.insert(client_id.as_bytes(), value).map_err(|e| self.error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids = store.subscription_ids("c", &["a/#".into()]).unwrap();
        assert_eq!(ids["a/#"], 1);
        // A filter inserted before it: a's identifier stays.
        let ids = store.subscription_ids("c", &["b/#".into(), "a/#".into()]).unwrap();
        assert_eq!((ids["b/#"], ids["a/#"]), (2, 1));
        // a removed, c added: c gets a new identifier, not a's.
        let ids = store.subscription_ids("c", &["b/#".into(), "c/#".into()]).unwrap();
        assert_eq!((ids["b/#"], ids["c/#"]), (2, 3));
        // Another session has its own.
        assert_eq!(store.subscription_ids("d", &["c/#".into()]).unwrap()["c/#"], 1);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.subscription_ids("c", &["a/#".into()]).unwrap()["a/#"], 1);
        let confirmed = BTreeMap::from([("b/#".to_string(), Subscribed { id: 2, qos: 1 })]);
        store.set_subscribed("c", confirmed.clone()).unwrap();
        assert_eq!(store.session_book("c").unwrap().subscribed, confirmed);
        assert_eq!(store.session_book("c").unwrap().next_id, 4);
    }
}
