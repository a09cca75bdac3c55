//! Registrations of MACs first seen here (DESIGN §4), with the site's
//! autonomy level deciding whether one seen offline becomes a node here
//! at once (DESIGN §15).

use super::*;

impl Outbox {
    /// DESIGN §4, an unknown MAC: registered at the controller (standalone:
    /// stored as `discovered`) when it can be reached; when it cannot, the
    /// registration is queued and the node cached as `discovered` under a
    /// local id (`local-<uuid>`, remapped when the registration is
    /// accepted). A controller that answers the registration with an error
    /// gets no queued registration (DESIGN §4: not until it answers
    /// properly). A MAC already cached, or being registered by a
    /// concurrent boot, is left alone.
    pub async fn register(&self, mac: Mac, facts: &BootFacts) -> Result<Registered, WriteError> {
        self.register_once(mac, facts, true).await
    }

    /// Like [`Outbox::register`] when the caller has just found the
    /// controller unreachable: queued without another attempt.
    pub async fn register_offline(
        &self,
        mac: Mac,
        facts: &BootFacts,
    ) -> Result<Registered, WriteError> {
        self.register_once(mac, facts, false).await
    }

    async fn register_once(
        &self,
        mac: Mac,
        facts: &BootFacts,
        direct: bool,
    ) -> Result<Registered, WriteError> {
        if let Some(node) = self.nodes.get(mac) {
            return Ok(Registered::Known(Some(node)));
        }
        if !self
            .registering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mac)
        {
            return Ok(Registered::Known(None));
        }
        // Checked again under the guard: a boot that finished registering
        // just before it was taken has cached the node.
        let result = match self.nodes.get(mac) {
            Some(node) => Ok(Registered::Known(Some(node))),
            None => self.write_registration(mac, facts, direct).await,
        };
        self.registering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
        result
    }

    async fn write_registration(
        &self,
        mac: Mac,
        facts: &BootFacts,
        direct: bool,
    ) -> Result<Registered, WriteError> {
        let node = discovered_node(mac, facts);
        let operation = Operation::Register {
            node_id: node.id.clone(),
            request: NewNode::from_facts(mac, facts, self.port.site_id()),
        };
        let key = match self.attempt(mac, &operation, direct).await? {
            Attempt::Sent(answer) => {
                let answer = answer.ok_or_else(|| {
                    WriteError::NotRegistered(CentralError::Garbage(
                        "registration answered without a node".into(),
                    ))
                })?;
                let stored = self.nodes.upsert_central(answer).await?;
                tracing::info!(%mac, id = %stored.id, mode = self.port.mode().as_str(), "new node registered");
                return Ok(Registered::Sent(stored));
            }
            Attempt::Queue { error: Some(e), .. } if !e.is_unreachable() => {
                return Err(WriteError::NotRegistered(e));
            }
            Attempt::Queue { key, .. } => key,
        };
        let may_create = self
            .offline_check(crate::model::policy::OfflineWrite::NewNode)
            .is_ok();
        if !may_create {
            // One queued registration per MAC is enough: its later boots,
            // still unknown here, must not queue it again each time.
            let queued = self
                .queue
                .call(move |q| q.has_active(&mac.to_string()))
                .await?;
            if !queued {
                self.enqueue_operation(
                    Kind::Registration,
                    Origin::Node,
                    mac,
                    &operation,
                    key,
                    None,
                )
                .await?;
                tracing::info!(%mac, autonomy = self.site_policy.autonomy().as_str(),
                    "unknown node seen offline; registration queued, no node created here");
            }
            return Ok(Registered::Deferred);
        }
        // Queued first: a crash between the two writes leaves a
        // registration without a cached node (harmless: the controller's
        // record is cached when it is accepted), never the reverse.
        self.enqueue_operation(Kind::Registration, Origin::Node, mac, &operation, key, None)
            .await?;
        let stored = self.nodes.insert_if_absent(node).await?;
        tracing::info!(%mac, id = %stored.id, "unknown node seen offline; registration queued");
        Ok(Registered::Queued(stored))
    }
}
