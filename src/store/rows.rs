//! Narrow views of the store for the services that need a few of its
//! rows and nothing else: the boot service's workflows and last-served
//! scripts here, the content cache's index in `content.rs`. The services
//! hold the trait, not the [`Store`], so a test (or, later, a second agent
//! sharing state) can put another implementation behind it.

use std::sync::Arc;

use crate::model::mac::Mac;
use crate::model::node::Workflow;
use crate::store::{LastScript, Store, StoreError};

/// The rows the boot service reads and writes beside the node cache.
pub trait BootRows: Send + Sync + 'static {
    /// The workflow with this id as last synced, if any.
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StoreError>;
    /// Every workflow as last synced.
    fn workflows(&self) -> Result<Vec<Workflow>, StoreError>;
    /// What the agent served this MAC last, if anything.
    fn last_script(&self, mac: Mac) -> Result<Option<LastScript>, StoreError>;
    /// Records what these MACs were served, all or none.
    fn put_last_scripts(&self, scripts: &[(Mac, LastScript)]) -> Result<(), StoreError>;
}

impl BootRows for Store {
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StoreError> {
        self.get_workflow(id)
    }

    fn workflows(&self) -> Result<Vec<Workflow>, StoreError> {
        self.list_workflows()
    }

    fn last_script(&self, mac: Mac) -> Result<Option<LastScript>, StoreError> {
        self.get_last_script(mac)
    }

    fn put_last_scripts(&self, scripts: &[(Mac, LastScript)]) -> Result<(), StoreError> {
        Store::put_last_scripts(self, scripts)
    }
}

/// Runs `work` on `rows` off the async threads (the store blocks).
pub async fn blocking<R, T, F>(rows: &Arc<R>, work: F) -> Result<T, StoreError>
where
    R: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&R) -> Result<T, StoreError> + Send + 'static,
{
    let rows = rows.clone();
    tokio::task::spawn_blocking(move || work(rows.as_ref()))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
