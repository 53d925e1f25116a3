//! The cluster: a pool of physical hosts (three to five, drawn from the
//! seed) that the pair's VMs run on, and where a new backup goes. Each
//! host registers what its agent would (`ftvm_cluster::placement::HostInfo`:
//! free memory, the VMs it runs, other pairs' included), and a new backup
//! is placed by the agents' own rule, [`place`]: never on the survivor's
//! host while another live host has room, else on the survivor's host,
//! the least loaded otherwise. A VM's memory is taken from its host from
//! its placement until its process ends (a crash, a halt, an end).
//!
//! A crash in [`CrashMode::Process`] kills one VM; the two others are the
//! host's: the host dies with every VM on it (both VMs of the pair, and a
//! new backup's host taking a snapshot, when they share it), its
//! registration expires, and placements avoid it until it has rebooted
//! (0.3 to 1.5 s later, empty) and its agent registers it again.
//!
//! [`CrashMode::Process`]: crate::plan::CrashMode::Process

use std::collections::BTreeMap;

use ftvm_cluster::placement::{HostInfo, place};

use crate::clone::case;
use crate::invariants::Invariant;
use crate::plan::CrashMode;
use crate::sim::{Sim, host_name};
use crate::{Broken, MS, Rng, SimError};

/// What a VM of the pair takes on a host: its guest's RAM
/// (`Guest::machine_config`).
pub(crate) const VM_MIB: u64 = 16;

/// A physical host of the pool.
pub(crate) struct Server {
    pub name: String,
    /// Memory it can give the pair's VMs (other pairs' already taken).
    room_mib: u64,
    /// Other pairs' VMs it runs.
    others: u32,
    pub alive: bool,
    /// A crashed host registers again then.
    back_at: u64,
}

pub(crate) struct Cluster {
    pub servers: Vec<Server>,
    /// VM id (0 = A, 1 = B, ...) -> the host it was placed on.
    pub placed: BTreeMap<usize, usize>,
    /// Placements so far, and how many put a new backup on its
    /// survivor's host (no other host had room).
    pub placements: u64,
    pub beside_survivor: u64,
    /// The cluster's own stream (reboot times).
    rng: Rng,
}

impl Cluster {
    /// The pool of `seed`'s cluster: three to five hosts, each with room
    /// for zero to three VMs (and some slack, so that free memory breaks
    /// ties), and zero to three VMs of other pairs; room for the pair's
    /// first two VMs somewhere.
    pub fn draw(rng: &mut Rng) -> Cluster {
        let n = rng.range(3, 6) as usize;
        let mut servers: Vec<Server> = (0..n)
            .map(|k| Server {
                name: format!("h{}", k + 1),
                room_mib: rng.range(0, 4) * VM_MIB + rng.range(0, VM_MIB),
                others: rng.range(0, 4) as u32,
                alive: true,
                back_at: 0,
            })
            .collect();
        let room: u64 = servers.iter().map(|s| s.room_mib / VM_MIB).sum();
        if room < 2 {
            servers[0].room_mib += 2 * VM_MIB;
        }
        Cluster {
            servers,
            placed: BTreeMap::new(),
            placements: 0,
            beside_survivor: 0,
            rng: Rng::new(rng.next_u64()),
        }
    }

    /// The plan's line for the pool.
    pub fn line(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .map(|s| {
                format!(
                    "{} (room for {} VMs, {} others)",
                    s.name,
                    s.room_mib / VM_MIB,
                    s.others
                )
            })
            .collect();
        format!("hosts {}", hosts.join(", "))
    }

    /// The name of the host VM `id` runs on.
    pub fn host_of(&self, id: usize) -> &str {
        self.placed
            .get(&id)
            .and_then(|&k| self.servers.get(k))
            .map_or("?", |s| &s.name)
    }
}

impl Sim {
    /// The host the VM in slot `i` runs on.
    pub(crate) fn server_of(&self, i: usize) -> Option<usize> {
        self.cluster.placed.get(&self.hosts.id[i]).copied()
    }

    /// The pair's VMs host `k` runs now (a new backup's host that takes
    /// a snapshot included; a VM that halted or ended is gone).
    fn vms_on(&self, k: usize) -> u64 {
        (0..2)
            .filter(|&i| {
                self.server_of(i) == Some(k)
                    && (self.hosts.slot[i]
                        .as_ref()
                        .is_some_and(|h| !h.status().is_done())
                        || self.clone_receiving(i))
            })
            .count() as u64
    }

    /// What the live hosts' agents have registered, with their index.
    fn registrations(&self) -> Vec<(usize, HostInfo)> {
        let c = &self.cluster;
        (0..c.servers.len())
            .filter(|&k| c.servers[k].alive)
            .map(|k| {
                let s = &c.servers[k];
                let mine = self.vms_on(k);
                let info = HostInfo {
                    name: s.name.clone(),
                    agent: format!("{}:7000", s.name),
                    vm_addr: format!("10.0.0.{}", k + 1),
                    free_mib: s.room_mib.saturating_sub(mine * VM_MIB),
                    vms: s.others + mine as u32,
                    http: None,
                };
                (k, info)
            })
            .collect()
    }

    /// Where VM `id` goes, by the agents' rule; `survivor`: the slot of
    /// the VM it is to protect (none for the first primary); `leaving`: a
    /// host a migration moves away from, avoided when another host can
    /// take the VM instead. `None` if no live host has room. The
    /// placement invariant is checked here, apart from `place`: never the
    /// survivor's host while another live host has room.
    pub(crate) fn choose_host(
        &mut self,
        id: usize,
        survivor: Option<usize>,
        leaving: Option<usize>,
    ) -> Result<Option<usize>, SimError> {
        let now = self.now;
        for k in 0..self.cluster.servers.len() {
            let server = &mut self.cluster.servers[k];
            if !server.alive && server.back_at <= now {
                server.alive = true;
                let name = server.name.clone();
                self.note(|| format!("host {name} is back"));
            }
        }
        let registered = self.registrations();
        let survivor_host = survivor.and_then(|s| self.server_of(s));
        let survivor_name =
            survivor_host.map_or(String::new(), |k| self.cluster.servers[k].name.clone());
        let infos: Vec<HostInfo> = registered.iter().map(|(_, h)| h.clone()).collect();
        let index = |h: &HostInfo| {
            registered
                .iter()
                .find(|(_, r)| r.name == h.name)
                .map(|r| r.0)
        };
        let chosen = if self.options.broken == Some(Broken::SameHostBackup) && survivor.is_some() {
            // The broken agent looks only at its own host's registration.
            let own: Vec<HostInfo> = infos
                .iter()
                .filter(|h| h.name == survivor_name)
                .cloned()
                .collect();
            place(&own, &survivor_name, VM_MIB)
                .or_else(|| place(&infos, &survivor_name, VM_MIB))
                .and_then(index)
        } else {
            let elsewhere: Vec<HostInfo> = infos
                .iter()
                .filter(|h| leaving.is_none_or(|l| index(h) != Some(l)))
                .cloned()
                .collect();
            place(&elsewhere, &survivor_name, VM_MIB)
                .filter(|h| h.name != survivor_name)
                .or_else(|| place(&infos, &survivor_name, VM_MIB))
                .and_then(index)
        };
        let Some(k) = chosen else {
            self.restoring.cases.insert(case::NO_ROOM);
            let vm = host_name(id);
            self.note(|| format!("no live host has room for {vm}"));
            return Ok(None);
        };
        if survivor_host == Some(k) {
            let roomy: Vec<&str> = registered
                .iter()
                .filter(|(other, h)| *other != k && h.free_mib >= VM_MIB)
                .map(|(_, h)| h.name.as_str())
                .collect();
            if !roomy.is_empty() {
                return Err(self.violation(
                    Invariant::Placement,
                    format!(
                        "{} is placed on its survivor's host {survivor_name}, while {} had room",
                        host_name(id),
                        roomy.join(", ")
                    ),
                ));
            }
        }
        Ok(Some(k))
    }

    /// VM `id` runs on host `k` from now on; `survivor`: the slot of the
    /// VM it protects.
    pub(crate) fn placed(&mut self, id: usize, k: usize, survivor: Option<usize>) {
        if survivor.is_some_and(|s| self.server_of(s) == Some(k)) {
            self.cluster.beside_survivor += 1;
            self.restoring.cases.insert(case::BESIDE_SURVIVOR);
        }
        self.cluster.placements += 1;
        self.cluster.placed.insert(id, k);
        let (vm, name) = (host_name(id), self.cluster.servers[k].name.clone());
        self.note(|| format!("{vm} is placed on {name}"));
    }

    /// The slots a crash of the VM in slot `i` in `mode` kills: its own,
    /// and, when its host dies, every other VM there (the host is gone
    /// for good).
    pub(crate) fn crash_victims(&mut self, i: usize, mode: CrashMode) -> Vec<usize> {
        let Some(k) = self.server_of(i).filter(|_| mode != CrashMode::Process) else {
            return vec![i];
        };
        let victims: Vec<usize> = [i, 1 - i]
            .into_iter()
            .filter(|&j| {
                j == i
                    || (self.server_of(j) == Some(k)
                        && (self.hosts.slot[j].is_some() || self.clone_receiving(j)))
            })
            .collect();
        if self.cluster.servers[k].alive {
            let reboot = self.cluster.rng.range(300, 1_500) * MS;
            self.cluster.servers[k].alive = false;
            self.cluster.servers[k].back_at = self.now + reboot;
            let name = self.cluster.servers[k].name.clone();
            self.note(|| format!("host {name} crashes"));
        }
        let running = victims
            .iter()
            .filter(|&&j| {
                self.hosts.slot[j]
                    .as_ref()
                    .is_some_and(|h| !h.status().is_done())
            })
            .count();
        if running > 1 {
            self.restoring.cases.insert(case::HOST_TOOK_BOTH);
        }
        victims
    }
}
