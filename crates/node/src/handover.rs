//! A planned hand-over of the VM to its backup (`ftvm migrate --vm
//! primary`; ARCHITECTURE.md, "A planned hand-over (migration)"): the
//! primary stops, names its stop point in the log, lets the disk and
//! network go quiet and everything be acknowledged and released, then
//! tells the backup to take over.

use ftvm_ft::channel::Message;

use crate::live::Phase;
use crate::{Effect, Mode, Node, Time};

impl Node {
    /// Hand the VM over to the backup (`ftvm migrate --vm primary`): stop
    /// executing here, and once the backup holds every entry and every
    /// output is released, tell it to take over. The backup then wins the
    /// test-and-set and closes the channel; this VM, asking in turn, loses
    /// and halts (`handed-over`). Should the backup fail first, this VM
    /// wins and runs on. Only a primary whose backup protects it can.
    pub fn hand_over(&mut self, time: Time) -> Result<(), &'static str> {
        let Mode::Running(r) = &mut self.mode else {
            return Err("it does not run the guest");
        };
        let Some(pair) = r.pair.as_mut() else {
            return Err("it has no backup to hand over to");
        };
        if pair.phase != Phase::Protected || pair.arbitrating || pair.ending.is_some() {
            return Err("its backup does not protect it now");
        }
        pair.handing_over = true;
        tracing::info!(pair = %self.config.pair, icount = r.machine.icount(),
            "handing the VM over to the backup");
        // The log names the stop point: the backup replays to exactly here
        // before it goes live (a marker makes a go-live run to its icount).
        if let Err(e) = r.recorder.output(&r.machine) {
            tracing::warn!("logging the stop point: {e}");
        }
        if let Err(e) = self.send_log(time, true) {
            tracing::warn!("sending the log: {e}");
        }
        self.finish_hand_over(time);
        Ok(())
    }

    /// Send `HandOver` once the disk and network are quiet (no request in
    /// flight, so the new primary re-issues nothing) and everything is
    /// logged, sent, acknowledged and released. Inputs that arrive
    /// meanwhile (the completions of those requests) are logged and sent
    /// like any other.
    pub(crate) fn finish_hand_over(&mut self, time: Time) {
        let handing = matches!(&self.mode, Mode::Running(r)
            if r.pair.as_ref().is_some_and(|p| p.handing_over && !p.handed));
        if !handing {
            return;
        }
        if let Err(e) = self.send_log(time, true) {
            tracing::warn!("sending the log: {e}");
        }
        let io_pending = !self.in_flight.is_empty()
            || self.effects.iter().any(|e| matches!(e, Effect::Perform(_)));
        let Mode::Running(r) = &mut self.mode else {
            return;
        };
        let Some(pair) = r.pair.as_mut() else {
            return;
        };
        if io_pending || pair.protocol.held() > 0 || pair.protocol.lag().0 > 0 {
            return;
        }
        pair.handed = true;
        let through = r.recorder.entries();
        self.effects
            .push(Effect::Send(Message::HandOver { through }));
        self.detector.sent(time.ms());
    }
}
