//! # ftvm-cluster — the hosts of an ftvm cluster and how they work together
//!
//! Every host runs `ftvm agent`. The agent registers its host (name,
//! addresses, free memory) in the cluster store under a lease it keeps
//! alive, so a host that dies drops out of the cluster by itself; it
//! publishes the VMs it runs ([`store`]); it starts VMs when another agent
//! asks (clone and migration targets); and when a VM it runs is left
//! alone, it picks a host for a new backup ([`placement::place`]) and has
//! the VM cloned there. Requests between agents are authenticated with
//! the cluster key ([`request`]).
//!
//! This crate is the logic, without I/O, so that the simulator places VMs
//! by the same rule; the agent itself is `ftvm agent --cluster`.

#![forbid(unsafe_code)]

pub mod placement;
pub mod request;
pub mod store;
