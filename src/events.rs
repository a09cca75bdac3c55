//! Live events for the operator's view (DESIGN §11, `GET
//! /api/v1/events`): boots, mode changes, queue and conflict changes, as a
//! broadcast every connected client follows. Publishing never waits: a
//! client that falls behind is told so (and refetches) instead of holding
//! the agent back.

use std::sync::LazyLock;

use tokio::sync::broadcast;

/// Events buffered per client before it is told it fell behind.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub struct Event {
    /// `boots`, `mode`, `queue` or `conflict`.
    pub kind: &'static str,
    /// The event's JSON, written once for every client.
    pub data: std::sync::Arc<str>,
}

static EVENTS: LazyLock<broadcast::Sender<Event>> = LazyLock::new(|| broadcast::channel(BACKLOG).0);

/// Sends `data` as a `kind` event to every connected client (none: dropped).
pub fn publish(kind: &'static str, data: serde_json::Value) {
    if EVENTS.receiver_count() == 0 {
        return;
    }
    let data = data.to_string().into();
    let _ = EVENTS.send(Event { kind, data });
}

/// Is any client connected? (Callers skip building an event otherwise.)
pub fn listening() -> bool {
    EVENTS.receiver_count() > 0
}

/// A new client's stream of events from now on.
pub fn subscribe() -> broadcast::Receiver<Event> {
    EVENTS.subscribe()
}
