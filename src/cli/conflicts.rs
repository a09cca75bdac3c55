//! `siteboot conflicts …`: conflicts from the command line (DESIGN §8).
//! Like `siteboot queue`, through the running agent's admin API, or on the
//! database when the agent is stopped. Settling one needs the running
//! agent (a resolution may ask the controller for its record).

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::agent_api::AgentApi;
use crate::config::{Config, ConflictPolicies, Policy};
use crate::store::conflicts::{self, Status};
use crate::store::{Store, StoreError};

#[derive(Subcommand)]
pub enum ConflictsCommand {
    /// List conflicts, newest first.
    List {
        /// open or resolved.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One conflict, both sides.
    Show { id: u64 },
    /// Settle one: keep_local, keep_central or merge (needs the running agent).
    Resolve {
        id: u64,
        #[arg(long)]
        resolution: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Show the policies, or change some: `--set state_mismatch=manual`.
    Policy {
        #[arg(long)]
        set: Vec<String>,
    },
}

fn status(text: &str) -> Result<Status> {
    match text {
        "open" => Ok(Status::Open),
        "resolved" => Ok(Status::Resolved),
        other => bail!("unknown conflict status {other:?}; valid: open, resolved"),
    }
}

/// `kind=policy` pairs applied to `current`.
fn changed(current: ConflictPolicies, set: &[String]) -> Result<ConflictPolicies> {
    let mut policies = current;
    for pair in set {
        let Some((kind, value)) = pair.split_once('=') else {
            bail!("--set wants kind=policy, not {pair:?}");
        };
        let policy = value.parse::<Policy>().map_err(anyhow::Error::msg)?;
        let slot = match kind {
            "state_mismatch" => &mut policies.state_mismatch,
            "missing_central" => &mut policies.missing_central,
            "missing_local" => &mut policies.missing_local,
            other => bail!(
                "unknown conflict kind {other:?}; valid: state_mismatch, missing_central, missing_local"
            ),
        };
        if policy == Policy::Auto && kind != "state_mismatch" {
            bail!("{kind}: auto applies to state_mismatch only");
        }
        *slot = policy;
    }
    Ok(policies)
}

pub async fn run(config: Config, url: Option<String>, action: ConflictsCommand) -> Result<()> {
    let answer = match Store::open(&config.data_dir) {
        Ok(store) => direct(&config, &store, action)?,
        Err(StoreError::Locked { .. }) => via_agent(&AgentApi::new(&config, url)?, action).await?,
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn direct(config: &Config, store: &Store, action: ConflictsCommand) -> Result<Value> {
    Ok(match action {
        ConflictsCommand::List {
            status: wanted,
            offset,
            limit,
        } => {
            let wanted = wanted.as_deref().map(status).transpose()?;
            let data = conflicts::list(store, wanted, offset, limit)?;
            json!({"data": data, "offset": offset, "limit": limit, "open": conflicts::open_count(store)?})
        }
        ConflictsCommand::Show { id } => match conflicts::get(store, id)? {
            Some(conflict) => json!({ "data": conflict }),
            None => bail!("no conflict {id}"),
        },
        ConflictsCommand::Resolve { .. } => bail!(
            "settling a conflict needs the running agent (it may ask the controller); start it"
        ),
        ConflictsCommand::Policy { set } => {
            let current = crate::outbox::stored_policies(store, config.conflicts)?;
            let policies = changed(current, &set)?;
            if !set.is_empty() {
                let text = serde_json::to_string(&policies)?;
                store.put_meta(&[(crate::outbox::META_CONFLICT_POLICY, &text)])?;
            }
            json!({ "data": policies })
        }
    })
}

async fn via_agent(api: &AgentApi, action: ConflictsCommand) -> Result<Value> {
    use reqwest::Method;
    let request = match action {
        ConflictsCommand::List {
            status: wanted,
            offset,
            limit,
        } => {
            let mut query = vec![("offset", offset.to_string()), ("limit", limit.to_string())];
            if let Some(wanted) = wanted {
                status(&wanted)?;
                query.push(("status", wanted));
            }
            api.request(Method::GET, "/api/v1/conflicts").query(&query)
        }
        ConflictsCommand::Show { id } => {
            api.request(Method::GET, &format!("/api/v1/conflicts/{id}"))
        }
        ConflictsCommand::Resolve {
            id,
            resolution,
            comment,
        } => api
            .request(Method::POST, &format!("/api/v1/conflicts/{id}/resolve"))
            .json(&json!({"resolution": resolution, "comment": comment})),
        ConflictsCommand::Policy { set } if set.is_empty() => {
            api.request(Method::GET, "/api/v1/conflicts/policy")
        }
        ConflictsCommand::Policy { set } => {
            let mut body = serde_json::Map::new();
            for pair in &set {
                let Some((kind, value)) = pair.split_once('=') else {
                    bail!("--set wants kind=policy, not {pair:?}");
                };
                body.insert(kind.to_string(), json!(value));
            }
            api.request(Method::PUT, "/api/v1/conflicts/policy")
                .json(&Value::Object(body))
        }
    };
    api.send(request).await
}
