//! The node cache: every node of the redb store, also held in memory.
//!
//! A boot request reads its node from memory, so a boot storm costs no disk
//! reads and no hop to the blocking pool; every write goes to redb first
//! (durably) and only then to memory, under one lock so that memory and disk
//! never disagree about which write came last.

use crate::model::mac::MacMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::store::{Store, StoreError};

type NodeMap = MacMap<Arc<Node>>;

/// Every node in memory, written through to the store: boots read here,
/// never the database.
#[derive(Clone)]
pub struct NodeCache {
    store: Store,
    nodes: Arc<RwLock<NodeMap>>,
    /// Serialises write-then-publish, see the module comment.
    write_lock: Arc<Mutex<()>>,
    /// Held by whoever reads the stored cursor or applies a page of the
    /// controller's node listing (a sync, a change feed round); see
    /// [`FeedOrder`].
    feed: Arc<tokio::sync::Mutex<FeedOrder>>,
    /// The last ticket given to a call of the node listing.
    feed_tickets: Arc<AtomicU64>,
    /// Moved on each time stored workflows change (see
    /// [`NodeCache::workflows_written`]).
    workflows_epoch: Arc<AtomicU64>,
}

/// The order of the calls that read the controller's node listing. Each
/// takes a ticket (under the feed lock) when its call starts; a page is
/// applied only if no call that started later has been applied already,
/// so an older page never overwrites a newer one, even when calls
/// overlap (change feed rounds make their calls outside the lock).
#[derive(Debug, Default)]
pub struct FeedOrder {
    applied: u64,
}

impl FeedOrder {
    /// May the page of the call with `ticket` be applied? If so, it
    /// counts as applied from now on (a later-started one only may follow).
    pub fn admit(&mut self, ticket: u64) -> bool {
        if ticket > self.applied {
            self.applied = ticket;
            true
        } else {
            false
        }
    }
}

impl NodeCache {
    /// Loads every node (blocking; at start-up).
    pub fn load(store: Store) -> Result<NodeCache, StoreError> {
        let nodes = store
            .list_nodes()?
            .into_iter()
            .map(|node| (node.mac, Arc::new(node)))
            .collect();
        Ok(NodeCache {
            store,
            nodes: Arc::new(RwLock::new(nodes)),
            write_lock: Arc::new(Mutex::new(())),
            feed: Arc::new(tokio::sync::Mutex::new(FeedOrder::default())),
            feed_tickets: Arc::new(AtomicU64::new(0)),
            workflows_epoch: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Taken while reading the cursor or applying a page (see `feed`).
    pub async fn lock_feed(&self) -> tokio::sync::MutexGuard<'_, FeedOrder> {
        self.feed.lock().await
    }

    /// A ticket for a call of the node listing starting now, ordered
    /// after every ticket given before (see [`FeedOrder`]). A call whose
    /// page may be applied takes it under the feed lock, so that no page
    /// is applied between the ticket and the cursor's read.
    pub fn take_feed_ticket(&self) -> u64 {
        self.feed_tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// To be called after stored workflows were changed (committed): a
    /// script rendered before is not handed out again, since the cache
    /// of rendered scripts is keyed by the node record, not by its
    /// workflow.
    pub fn workflows_written(&self) {
        self.workflows_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The counter [`NodeCache::workflows_written`] moves, shared.
    pub fn workflows_epoch(&self) -> Arc<AtomicU64> {
        self.workflows_epoch.clone()
    }

    /// The last ticket given: a call whose ticket is above it starts after
    /// now.
    pub fn last_feed_ticket(&self) -> u64 {
        self.feed_tickets.load(Ordering::SeqCst)
    }

    /// The store behind it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node with this MAC, if any.
    pub fn get(&self, mac: Mac) -> Option<Arc<Node>> {
        read(&self.nodes).get(&mac).cloned()
    }

    /// Every cached node (a snapshot).
    pub fn all(&self) -> Vec<Arc<Node>> {
        read(&self.nodes).values().cloned().collect()
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        read(&self.nodes).len()
    }

    /// Does it hold no node?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `node` unless its MAC is known; returns the node now stored.
    pub async fn insert_if_absent(&self, node: Node) -> Result<Arc<Node>, StoreError> {
        self.write(move |store| store.insert_node_if_absent(&node))
            .await
    }

    /// Stores a node first seen at boot unless its MAC is known, keeping at
    /// most `max` nodes that were only ever discovered (state `discovered`,
    /// no workflow): past that, the one seen longest ago goes, in the same
    /// commit (DESIGN §10: random MACs must not grow the store forever).
    pub async fn insert_discovered(&self, node: Node, max: usize) -> Result<Arc<Node>, StoreError> {
        let nodes = self.nodes.clone();
        let lock = self.write_lock.clone();
        self.store
            .call(move |store| {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let evict = {
                    let map = read(&nodes);
                    if map.contains_key(&node.mac) {
                        None
                    } else {
                        let unassigned = || {
                            map.values().filter(|n| {
                                n.seen_at_boot
                                    && n.state == crate::model::node::NodeState::Discovered
                                    && n.workflow_id.is_none()
                            })
                        };
                        if unassigned().count() >= max {
                            unassigned().min_by_key(|n| n.updated_at).map(|n| n.mac)
                        } else {
                            None
                        }
                    }
                };
                let stored = Arc::new(store.insert_node_evicting(&node, evict)?);
                let mut map = write(&nodes);
                if stored.id == node.id
                    && let Some(old) = evict
                {
                    map.remove(&old);
                    tracing::info!(evicted = %old, "nodes.max_discovered reached: the oldest never-assigned discovered node was dropped");
                }
                map.insert(stored.mac, stored.clone());
                Ok(stored)
            })
            .await
    }

    /// Changes a stored node in one transaction.
    pub async fn update(
        &self,
        mac: Mac,
        change: impl FnOnce(&mut Node) + Send + 'static,
    ) -> Result<Arc<Node>, StoreError> {
        self.write(move |store| store.update_node(mac, change))
            .await
    }

    /// Forgets a node (a local one the controller refused for good: the
    /// next boot registers it afresh). True if it was cached.
    pub async fn remove(&self, mac: Mac) -> Result<bool, StoreError> {
        let nodes = self.nodes.clone();
        let lock = self.write_lock.clone();
        self.store
            .call(move |store| {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let removed = store.remove_node(mac)?;
                write(&nodes).remove(&mac);
                Ok(removed)
            })
            .await
    }

    /// Stores `node` as it is (replacing the MAC's record).
    pub async fn put(&self, node: Node) -> Result<Arc<Node>, StoreError> {
        self.write(move |store| {
            store.put_node(&node)?;
            Ok(node)
        })
        .await
    }

    /// Takes the controller's record of a node. An unchanged record keeps
    /// the cached `Arc` (so rendered scripts stay valid) and costs no write.
    pub async fn upsert_central(&self, node: Node) -> Result<Arc<Node>, StoreError> {
        if let Some(cached) = self.get(node.mac)
            && cached.same_as_central(&node)
            && cached.missing_central_since.is_none()
        {
            return Ok(cached);
        }
        self.write(move |store| {
            let mut node = node;
            node.cached_at = Some(time::OffsetDateTime::now_utc());
            node.missing_central_since = None;
            store.put_node(&node)?;
            Ok(node)
        })
        .await
    }

    /// Applies a sync page: stores changed nodes; after a full sync, marks
    /// cached controller nodes it did not list. Nodes in `protected` hold
    /// local changes still queued for the controller and are left as they
    /// are until those are sent. Returns (changed, marked).
    pub async fn apply_sync(
        &self,
        nodes: Vec<Node>,
        full: bool,
        protected: &std::collections::HashSet<Mac>,
    ) -> Result<(usize, usize), StoreError> {
        let now = time::OffsetDateTime::now_utc();
        let listed: std::collections::HashSet<Mac> = nodes.iter().map(|n| n.mac).collect();
        let mut changed: Vec<Node> = nodes
            .into_iter()
            .filter(|node| !protected.contains(&node.mac))
            .filter(|node| {
                self.get(node.mac)
                    .is_none_or(|c| !c.same_as_central(node) || c.missing_central_since.is_some())
            })
            .map(|mut node| {
                node.cached_at = Some(now);
                node
            })
            .collect();
        let count_changed = changed.len();
        let mut marked = 0;
        if full {
            for cached in read(&self.nodes).values() {
                // Nodes first seen here (local-…) were never the controller's.
                if !listed.contains(&cached.mac)
                    && !protected.contains(&cached.mac)
                    && !cached.id.starts_with("local-")
                    && cached.missing_central_since.is_none()
                {
                    let mut node = (**cached).clone();
                    node.missing_central_since = Some(now);
                    changed.push(node);
                    marked += 1;
                }
            }
        }
        if changed.is_empty() {
            return Ok((0, 0));
        }
        let nodes = self.nodes.clone();
        let lock = self.write_lock.clone();
        self.store
            .call(move |store| {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                store.put_nodes(&changed)?;
                let mut map = write(&nodes);
                for node in changed {
                    map.insert(node.mac, Arc::new(node));
                }
                Ok(())
            })
            .await?;
        Ok((count_changed, marked))
    }

    /// Runs a blocking store write that changes nodes (returned with its
    /// value) under the write lock, then publishes them: for writers that
    /// commit nodes in a transaction of their own (the queue).
    pub fn write_blocking<T, E>(
        &self,
        work: impl FnOnce() -> Result<(T, Vec<Node>), E>,
    ) -> Result<T, E> {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (value, changed) = work()?;
        let mut map = write(&self.nodes);
        for node in changed {
            map.insert(node.mac, Arc::new(node));
        }
        Ok(value)
    }

    async fn write(
        &self,
        work: impl FnOnce(&Store) -> Result<Node, StoreError> + Send + 'static,
    ) -> Result<Arc<Node>, StoreError> {
        let nodes = self.nodes.clone();
        let lock = self.write_lock.clone();
        self.store
            .call(move |store| {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let node = Arc::new(work(store)?);
                write(&nodes).insert(node.mac, node.clone());
                Ok(node)
            })
            .await
    }
}

fn read(map: &RwLock<NodeMap>) -> std::sync::RwLockReadGuard<'_, NodeMap> {
    map.read().unwrap_or_else(|e| e.into_inner())
}

fn write(map: &RwLock<NodeMap>) -> std::sync::RwLockWriteGuard<'_, NodeMap> {
    map.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::NodeState;
    use time::OffsetDateTime;

    #[tokio::test]
    async fn writes_reach_disk_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        {
            let cache = NodeCache::load(Store::open(dir.path()).unwrap()).unwrap();
            assert!(cache.get(mac).is_none());
            let node = Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc());
            let stored = cache.insert_if_absent(node.clone()).await.unwrap();
            assert_eq!(stored.id, node.id);
            let again = Node::new_local(mac, NodeState::Active, OffsetDateTime::now_utc());
            assert_eq!(cache.insert_if_absent(again).await.unwrap().id, node.id);
            cache
                .update(mac, |n| n.state = NodeState::Active)
                .await
                .unwrap();
            assert_eq!(cache.get(mac).unwrap().state, NodeState::Active);
            assert_eq!(cache.len(), 1);
        }
        let reloaded = NodeCache::load(Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(reloaded.get(mac).unwrap().state, NodeState::Active);
    }
}
