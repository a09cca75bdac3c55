//! Keeping the agent linked to its controller: registration, connectivity
//! probes, heartbeats (and the commands they bring back), node sync.

pub mod sync;
pub mod tasks;
