//! `siteboot check-config`, the part that asks the controller: which
//! workflow ids the controller's nodes reference that this agent cannot
//! render (the controller lists none by that id and the config defines
//! none), so that an operator learns it before a node fails to install.

use std::collections::BTreeSet;

use crate::boot::templates::Templates;
use crate::central::Controller;
use crate::central::api::{parse_node, parse_workflow};
use crate::central::client::HttpController;
use crate::config::Config;

/// What the controller's node list says about workflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowCheck {
    pub nodes: usize,
    /// Workflow ids the nodes reference that nothing here defines.
    pub missing: BTreeSet<String>,
    /// Entries of the list that could not be read.
    pub unreadable: usize,
}

/// Asks the controller for the site's nodes (one full listing); Err if it
/// cannot be asked or answers no list.
pub async fn controller_workflows(config: &Config) -> Result<Option<WorkflowCheck>, String> {
    let Some(url) = &config.central.url else {
        return Ok(None);
    };
    let controller = HttpController::new(
        url,
        config.central.token_file.as_deref(),
        config.central.request_timeout,
    )
    .map_err(|e| e.to_string())?;
    let page = controller
        .site_nodes(&config.site_id, None)
        .await
        .map_err(|e| e.to_string())?;
    let listed: BTreeSet<String> = page
        .workflows
        .iter()
        .filter_map(|w| parse_workflow(w).ok())
        .map(|w| w.id)
        .collect();
    let mut unreadable = 0;
    let mut nodes = 0;
    let mut missing = BTreeSet::new();
    for entry in &page.data {
        match parse_node(entry) {
            Ok(node) => {
                nodes += 1;
                if let Some(id) = node.workflow_id
                    && !listed.contains(&id)
                    && !config.workflows.contains_key(&id)
                {
                    missing.insert(id);
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    Ok(Some(WorkflowCheck {
        nodes,
        missing,
        unreadable,
    }))
}

/// The conflict policy in force at the next start, when one set at run
/// time is stored and differs from the config (it wins until changed
/// again). Err when the database cannot be read (the agent holds it).
pub fn stored_policy_override(
    config: &Config,
) -> Result<Option<crate::config::ConflictPolicies>, String> {
    if !config.data_dir.join("siteboot.redb").exists() {
        return Ok(None);
    }
    let store = crate::store::Store::open(&config.data_dir).map_err(|e| e.to_string())?;
    let stored =
        crate::outbox::stored_policies(&store, config.conflicts).map_err(|e| e.to_string())?;
    Ok((stored != config.conflicts).then_some(stored))
}

/// `siteboot check-config`: the configuration and templates load, then
/// what the controller and the stored conflict policy add.
pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    Templates::load(&config.templates_dir)?;
    println!(
        "configuration OK: site_id={} mode={} http={} tftp={} data_dir={} workflows={}",
        config.site_id,
        if config.central.url.is_some() {
            "central"
        } else {
            "standalone"
        },
        config.http.listen,
        config.tftp.listen,
        config.data_dir.display(),
        config.workflows.len()
    );
    match controller_workflows(config).await {
        Ok(None) => {}
        Ok(Some(check)) if check.missing.is_empty() => println!(
            "controller: {} nodes listed; every workflow they reference can be rendered",
            check.nodes
        ),
        Ok(Some(check)) => println!(
            "controller: {} nodes listed; workflows they reference that this agent cannot \
             render (the controller lists none by these ids and the config defines none): {}",
            check.nodes,
            check.missing.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        Err(e) => println!("controller: not asked about workflows ({e})"),
    }
    match stored_policy_override(config) {
        Ok(None) => {}
        Ok(Some(p)) => println!(
            "conflict policy: set at run time and stored, it wins over this config until \
             changed again (PUT /api/v1/conflicts/policy): state_mismatch={} \
             missing_central={} missing_local={}",
            p.state_mismatch.as_str(),
            p.missing_central.as_str(),
            p.missing_local.as_str()
        ),
        Err(e) => println!(
            "conflict policy: the stored one cannot be read now ({e}); \
             GET /api/v1/conflicts/policy shows the one in force"
        ),
    }
    Ok(())
}
