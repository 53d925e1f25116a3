//! Moving a VM of a pair to another host, done by the agent of the host
//! whose VM runs the guest (so that it never races its own restores).
//!
//! The backup: its agent ends it, the VM runs alone for a moment, and a
//! clone at the target becomes the new backup. The primary: a clone at
//! the target first (the backup moves there, unless it is there already),
//! then a planned hand-over to it: the primary stops where the log says,
//! the backup takes over with no failure detection involved, and its
//! agent protects it again, as after any failure.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ftvm_cluster::request::{Request, StopOnly};
use ftvm_cluster::store::VmRecord;
use ftvm_host::control::{self, Request as VmRequest};
use ftvm_host::status::VmState;

use super::agent::{Agent, Busy};
use super::{ask_agent, hosts, protected, records};
use crate::pair::{read_named, wait_for};

const LIMIT: Duration = Duration::from_secs(120);

/// `busy` marks the pair as being moved; it is let go once the guest has
/// moved, because the agent that protects the VM again may be this one.
pub(super) fn migrate(
    agent: &Agent,
    pair: &str,
    backup: bool,
    to: Option<&str>,
    busy: Busy,
) -> Result<String> {
    let (primary, old_backup) = agent.protected_pair(pair)?;
    if backup {
        let started = Instant::now();
        let new = move_backup(agent, pair, &primary, &old_backup, to)?;
        return Ok(format!(
            "{pair}: the backup moved from {} on {} to {new} in {:.1} ms (the VM ran \
             unprotected meanwhile)",
            old_backup.name,
            old_backup.host,
            started.elapsed().as_secs_f64() * 1e3
        ));
    }
    let started = Instant::now();
    let mut target = old_backup.clone();
    if let Some(to) = to.filter(|to| *to != old_backup.host) {
        let new = move_backup(agent, pair, &primary, &old_backup, Some(to))?;
        // The records catch up with what the VMs say within a turn.
        target = wait_for(LIMIT, || {
            let records = records(agent.etcd(), pair).ok()?;
            protected(&records)
                .filter(|(_, b)| b.host == to)
                .map(|(_, b)| b.clone())
        })
        .with_context(|| format!("the pair lost its new backup {new}"))?;
    }
    let moved = if target.name == old_backup.name {
        Duration::ZERO
    } else {
        started.elapsed()
    };
    let handing = Instant::now();
    let socket = agent
        .pair_dir(pair)
        .join(format!("{}.control", primary.name));
    if let Err(why) = control::ask(&socket, &VmRequest::HandOver)? {
        bail!("{} refused to hand over: {why}", primary.name);
    }
    wait_for(LIMIT, || {
        let records = records(agent.etcd(), pair).ok()?;
        let new = records.iter().find(|r| r.name == target.name)?;
        (!new.running || new.state != "backup").then(|| new.clone())
    })
    .with_context(|| format!("{} did not take over", target.name))
    .and_then(|new| {
        if new.running && new.state == "live" {
            Ok(())
        } else {
            Err(anyhow!(
                "{} on {} did not take over: it is {}",
                new.name,
                new.host,
                new.state
            ))
        }
    })?;
    let handed_over = handing.elapsed();
    drop(busy);
    // Its agent protects it again, as after any failure.
    let (p, b) = wait_for(LIMIT, || {
        let records = records(agent.etcd(), pair).ok()?;
        protected(&records)
            .filter(|(p, _)| p.name == target.name)
            .map(|(p, b)| (p.clone(), b.clone()))
    })
    .with_context(|| format!("{} was not protected again", target.name))?;
    let clone = if moved.is_zero() {
        String::new()
    } else {
        format!(
            "the backup moved there first in {:.1} ms, ",
            moved.as_secs_f64() * 1e3
        )
    };
    Ok(format!(
        "{pair}: the VM moved from {} on {} to {} on {} ({clone}hand-over {:.1} ms); \
         protected again by {} on {} after {:.1} ms in all",
        primary.name,
        primary.host,
        p.name,
        p.host,
        handed_over.as_secs_f64() * 1e3,
        b.name,
        b.host,
        started.elapsed().as_secs_f64() * 1e3
    ))
}

/// End `old` (the backup), wait for the primary to run alone, clone it
/// to `to`; the new backup, described.
fn move_backup(
    agent: &Agent,
    pair: &str,
    primary: &VmRecord,
    old: &VmRecord,
    to: Option<&str>,
) -> Result<String> {
    let hosts = hosts(agent.etcd())?;
    if let Some(to) = to {
        if !hosts.iter().any(|h| h.name == to) {
            bail!("no host {to} is registered");
        }
    }
    let old_host = hosts
        .iter()
        .find(|h| h.name == old.host)
        .with_context(|| format!("the backup's host {} is not registered", old.host))?;
    let stop = Request::StopVm {
        pair: pair.into(),
        name: old.name.clone(),
        only: StopOnly::Backup,
    };
    ask_agent(&old_host.agent, agent.key(), &stop, Duration::from_secs(10))?;
    let dir = agent.pair_dir(pair);
    wait_for(LIMIT, || {
        read_named(&dir, &primary.name).filter(|vm| !vm.running() || vm.line.state == VmState::Live)
    })
    .with_context(|| format!("{} did not go on alone", primary.name))?;
    // Placement must not put the backup back where it was unless asked.
    let to = match to {
        Some(to) => Some(to.to_string()),
        None => {
            let others: Vec<_> = hosts.into_iter().filter(|h| h.name != old.host).collect();
            let plan_mib = agent.plan_mib(pair)?;
            ftvm_cluster::placement::place(&others, &primary.host, plan_mib).map(|h| h.name.clone())
        }
    };
    agent
        .restore(pair, &primary.name, to.as_deref())
        .map(|(done, _)| done)
}
