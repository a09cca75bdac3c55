//! `siteboot render`: the script a node would get now, printed without
//! running a server.

use anyhow::Result;

use crate::agent;
use crate::config::Config;
use crate::model::boot::BootFacts;
use crate::model::mac::Mac;
use crate::serve::origin::AgentOrigin;

/// What to render, as the command line gave it.
pub(crate) struct RenderRequest {
    pub(crate) mac: Mac,
    pub(crate) arch: Option<String>,
    pub(crate) platform: Option<String>,
    pub(crate) offline: bool,
    pub(crate) base_url: Option<String>,
}

pub(crate) async fn run(config: Config, request: RenderRequest) -> Result<()> {
    let services = agent::open_services(&config, false)?;
    let origin = AgentOrigin::new(config.http.public_url.clone(), config.http.listen.port());
    let base_url = request
        .base_url
        .unwrap_or_else(|| origin.url_at(std::net::Ipv4Addr::LOCALHOST.into()));
    let facts = BootFacts {
        arch: request.arch,
        platform: request.platform,
        ..BootFacts::default()
    };
    let answer = services
        .boot
        .preview(request.mac, &facts, request.offline, &base_url)
        .await;
    print!("{}", answer.script);
    Ok(())
}
