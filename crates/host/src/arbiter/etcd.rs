//! The test-and-set on etcd, for clusters that already run one: one
//! transaction per claim, "create the key `ftvm/PAIR/EPOCH` with
//! our claim if it does not exist, else read it". etcd's consensus makes
//! the claim atomic and durable; an etcd that cannot be reached (or has
//! no quorum) gives [`Verdict::Unreachable`], and the VM waits. Every
//! member is asked in turn, so the loss of one does not matter.

use ftvm_ft::golive::Verdict;

use super::{Arbiter, BadName, claimant, settle};
use crate::etcd::{EtcdClient, EtcdError};

pub struct EtcdArbiter {
    client: EtcdClient,
    claimant: String,
}

impl EtcdArbiter {
    /// An arbiter on the etcd members at `endpoints` (`HOST:PORT[,...]`
    /// of their client URLs) for the VM `me`; `token` must be random and
    /// fresh per VM process.
    pub fn new(endpoints: &str, me: &str, token: [u8; 16]) -> Result<EtcdArbiter, BadName> {
        Ok(EtcdArbiter {
            client: EtcdClient::new(endpoints).map_err(|_| BadName(endpoints.to_string()))?,
            claimant: claimant(me, token)?,
        })
    }

    fn claim(&self, pair: &str, epoch: u64) -> Result<Verdict, EtcdError> {
        let key = format!("ftvm/{pair}/{epoch}");
        let holder = self.client.create_or_read(&key, self.claimant.as_bytes())?;
        Ok(if holder == self.claimant.as_bytes() {
            Verdict::Won
        } else {
            Verdict::Lost
        })
    }
}

impl Arbiter for EtcdArbiter {
    fn test_and_set(&mut self, pair: &str, epoch: u64) -> Verdict {
        settle(pair, &self.client.endpoints(), || self.claim(pair, epoch))
    }
}
