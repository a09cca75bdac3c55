//! `siteboot nodes`: the local node store edited directly, while the
//! agent is stopped.

use anyhow::{Result, bail};
use time::OffsetDateTime;

use super::command::NodesCommand;
use crate::config::Config;
use crate::model::mac::Mac;
use crate::model::node::{self, Node, NodeState};
use crate::store::Store;

pub(crate) fn run(config: Config, action: NodesCommand) -> Result<()> {
    let store = Store::open(&config.data_dir)?;
    match action {
        NodesCommand::List => {
            let nodes = store.list_nodes()?;
            println!(
                "{:<17}  {:<14}  {:<20}  {:<12}  ID",
                "MAC", "STATE", "HOSTNAME", "WORKFLOW"
            );
            for n in &nodes {
                println!(
                    "{:<17}  {:<14}  {:<20}  {:<12}  {}",
                    n.mac,
                    n.state,
                    n.hostname.as_deref().unwrap_or("-"),
                    n.workflow_id.as_deref().unwrap_or("-"),
                    n.id
                );
            }
            eprintln!("{} node(s)", nodes.len());
        }
        NodesCommand::Add {
            mac,
            state,
            hostname,
            workflow,
        } => {
            let mac: Mac = mac.parse()?;
            let state: NodeState = state.parse()?;
            if let Some(h) = &hostname {
                node::validate_hostname(h).map_err(anyhow::Error::msg)?;
            }
            if let Some(id) = &workflow
                && !config.workflows.contains_key(id)
                && store.get_workflow(id)?.is_none()
            {
                bail!("unknown workflow {id:?}: define [workflows.{id}] in the configuration file");
            }
            let mut new = Node::new_local(mac, state, OffsetDateTime::now_utc());
            new.hostname = hostname;
            new.workflow_id = workflow;
            let stored = store.insert_node_if_absent(&new)?;
            if stored.id != new.id {
                bail!(
                    "node {mac} already exists (state {}); use `siteboot nodes set-state`",
                    stored.state
                );
            }
            println!("added {mac} state={state} id={}", stored.id);
        }
        NodesCommand::SetState { mac, state } => {
            let mac: Mac = mac.parse()?;
            let state: NodeState = state.parse()?;
            let node = store.update_node(mac, |n| {
                n.change_state(state, OffsetDateTime::now_utc());
            })?;
            println!("{mac} state={} version={}", node.state, node.version);
        }
        NodesCommand::Remove { mac } => {
            let mac: Mac = mac.parse()?;
            if !store.remove_node(mac)? {
                bail!("no node with MAC {mac}");
            }
            println!("removed {mac}");
        }
    }
    Ok(())
}
