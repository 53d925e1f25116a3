//! Where a new backup goes. Sans-IO, so that the agents and the
//! simulator place VMs by the same rule:
//!
//! 1. never on the host the survivor runs on, when any other registered
//!    host has room for the VM (anti-affinity: one host's loss must not
//!    take both VMs of a pair);
//! 2. else on the survivor's own host, if it has room (a single-host
//!    cluster still protects against the loss of a VM process);
//! 3. among the candidates, the least loaded: the most free memory, then
//!    the fewest VMs, then the name (so every agent that looks at the same
//!    registrations picks the same host).

use serde::{Deserialize, Serialize};

/// A host as its agent registers it in the cluster store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name, unique in the cluster.
    pub name: String,
    /// Where its agent takes requests (`HOST:PORT`).
    pub agent: String,
    /// The address its VMs listen on for logging channels (an IP).
    pub vm_addr: String,
    /// Memory the host can still give VMs, in MiB.
    pub free_mib: u64,
    /// VMs the agent runs now.
    pub vms: u32,
    /// Where its agent serves its status page and metrics (`HOST:PORT`),
    /// if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// The host for a new backup of a VM of `need_mib` whose survivor runs on
/// `survivor_host`, or `None` if no registered host has room.
pub fn place<'a>(
    hosts: &'a [HostInfo],
    survivor_host: &str,
    need_mib: u64,
) -> Option<&'a HostInfo> {
    let roomy = || hosts.iter().filter(|h| h.free_mib >= need_mib);
    let least_loaded = |a: &&HostInfo, b: &&HostInfo| {
        b.free_mib
            .cmp(&a.free_mib)
            .then(a.vms.cmp(&b.vms))
            .then(a.name.cmp(&b.name))
    };
    roomy()
        .filter(|h| h.name != survivor_host)
        .min_by(least_loaded)
        .or_else(|| roomy().find(|h| h.name == survivor_host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, free_mib: u64, vms: u32) -> HostInfo {
        HostInfo {
            name: name.into(),
            agent: format!("{name}:1"),
            vm_addr: "10.0.0.1".into(),
            http: None,
            free_mib,
            vms,
        }
    }

    #[test]
    fn never_the_survivors_host_when_another_has_room() {
        let hosts = [host("a", 9000, 0), host("b", 500, 3), host("c", 100, 0)];
        assert_eq!(place(&hosts, "a", 256).map(|h| &*h.name), Some("b"));
    }

    #[test]
    fn the_survivors_host_when_it_is_the_only_one_with_room() {
        let hosts = [host("a", 9000, 0), host("b", 100, 0)];
        assert_eq!(place(&hosts, "a", 256).map(|h| &*h.name), Some("a"));
        assert_eq!(place(&hosts[..1], "a", 256).map(|h| &*h.name), Some("a"));
    }

    #[test]
    fn nowhere_when_nobody_has_room() {
        let hosts = [host("a", 100, 0), host("b", 100, 0)];
        assert_eq!(place(&hosts, "a", 256), None);
        assert_eq!(place(&[], "a", 256), None);
    }

    #[test]
    fn the_least_loaded_then_the_fewest_vms_then_the_name() {
        let hosts = [host("d", 1000, 2), host("c", 1000, 1), host("b", 2000, 5)];
        assert_eq!(place(&hosts, "a", 256).map(|h| &*h.name), Some("b"));
        let hosts = [host("d", 1000, 2), host("c", 1000, 1), host("b", 1000, 1)];
        assert_eq!(place(&hosts, "a", 256).map(|h| &*h.name), Some("b"));
    }

    proptest! {
        /// Whatever the registrations, the choice has room, and is the
        /// survivor's host only when no other host has room.
        #[test]
        fn placement_keeps_its_rules(
            free in proptest::collection::vec((0u64..4096, 0u32..8), 0..6),
            survivor in 0usize..6,
            need in 1u64..2048,
        ) {
            let hosts: Vec<HostInfo> = free
                .iter()
                .enumerate()
                .map(|(i, &(f, v))| host(&format!("h{i}"), f, v))
                .collect();
            let survivor = format!("h{survivor}");
            let others_with_room = hosts.iter().any(|h| h.name != survivor && h.free_mib >= need);
            match place(&hosts, &survivor, need) {
                Some(h) => {
                    prop_assert!(h.free_mib >= need);
                    prop_assert!(h.name != survivor || !others_with_room);
                }
                None => prop_assert!(hosts.iter().all(|h| h.free_mib < need)),
            }
        }
    }
}
