//! What the cluster store holds, and under which keys. The agents keep
//! it; etcd makes it consistent, and each host's keys hang on the lease
//! its agent keeps alive, so they vanish with the host.

use serde::{Deserialize, Serialize};

/// A host's registration (on its lease).
pub fn host_key(host: &str) -> String {
    format!("ftvm/hosts/{host}")
}
pub const HOSTS: &str = "ftvm/hosts/";

/// A VM's record (on its host's lease). The host is part of the key: a
/// failed attempt's VM on one host and a later one of the same name on
/// another never overwrite (or retire) each other's record.
pub fn vm_key(pair: &str, vm: &str, host: &str) -> String {
    format!("ftvm/vms/{pair}/{vm}@{host}")
}
pub fn vms_of(pair: &str) -> String {
    format!("ftvm/vms/{pair}/")
}
pub const VMS: &str = "ftvm/vms/";

/// How to start a VM of the pair (a [`crate::request::PairPlan`], signed:
/// [`crate::request::seal_plan`]), written when the pair is started,
/// deleted when it is stopped.
pub fn plan_key(pair: &str) -> String {
    format!("ftvm/pairs/{pair}/plan")
}

/// While this key exists, no agent gives the pair's VM a backup (`ftvm
/// cluster unprotect`; `ftvm cluster protect` deletes it).
pub fn unprotected_key(pair: &str) -> String {
    format!("ftvm/pairs/{pair}/unprotected")
}

/// A VM as its host's agent publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub pair: String,
    pub name: String,
    pub host: String,
    /// Its status line's state word (`primary`, `backup`, `live`, ...).
    pub state: String,
    pub epoch: Option<u64>,
    pub pid: u32,
    /// Whether its process runs and has not said it is done.
    pub running: bool,
}

impl VmRecord {
    /// Whether this VM runs the guest (and so decides for the pair).
    pub fn runs_guest(&self) -> bool {
        self.running && matches!(&*self.state, "primary" | "live" | "cloning")
    }
}
