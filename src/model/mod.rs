//! What everything else talks about: MACs, nodes and workflows, the facts
//! a boot request carries and the answer it gets, the boot decision (pure),
//! and the agent's mode. Nothing here imports from outside `model`.

pub mod boot;
pub mod client;
pub mod decision;
pub mod mac;
pub mod mode;
pub mod node;
pub mod path;
pub mod policy;
pub mod script;
