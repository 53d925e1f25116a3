//! The pair's network: a learning Ethernet switch that runs apart from the
//! VMs (ARCHITECTURE.md, "The pair's network"), so that it outlives either
//! of them — it plays the physical network of the paper.
//!
//! VMs reach it over UDP: every datagram is one Ethernet frame, an empty
//! datagram says "this port is here" (sent when a VM attaches, then once a
//! second). A port is a VM's UDP address; one port is the switch's own
//! user-mode gateway ([`UserNet`](crate::UserNet)), whose forwarded host
//! ports and TCP connections therefore survive a failover. The switch
//! learns where each MAC address lives from the frames' sources, so a
//! backup that goes live and announces the VM's MAC (see [`announcement`])
//! draws the VM's traffic to its own port.
//!
//! With the pair's key (`ftvm up` gives it) every datagram is
//! authenticated (see [`crate::datagram`]): the switch and the VMs' ports
//! drop what fails its MAC or repeats, so a process without the key can
//! neither inject frames nor read the VM's back from the switch. Without a
//! key it is a plain Ethernet, which `ftvm switch` allows on loopback
//! only.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::datagram::{DatagramKey, Opener, Sealer, is_sealed};
use crate::{NetBackend, NetError};

/// A random id for a sending handle (its counter's namespace).
fn sender_id() -> u64 {
    let mut bytes = [0u8; 8];
    // Without the host's random source, the time: ids must differ, not be
    // secret.
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (now ^ u64::from(std::process::id())).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

/// A handle's datagram sealing, when the switch has a key.
struct Auth {
    sealer: Sealer,
    opener: Opener,
}

impl Auth {
    fn new(key: Option<DatagramKey>) -> Option<Auth> {
        key.map(|key| Auth {
            sealer: Sealer::new(key.clone(), sender_id()),
            opener: Opener::new(key),
        })
    }
}

pub type Mac = [u8; 6];

/// One of the switch's ports, as the [`Switch`] numbers them.
pub type PortId = usize;

/// A port that has said nothing for this long is gone (its VM sends a
/// keepalive every [`KEEPALIVE`]).
pub const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an attached VM says it is still there.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// The largest datagram the switch and its ports read: a frame of the
/// largest MTU ([`crate::MTU_MAX`]) with its seal fits.
pub const FRAME_MAX: usize = 65_535;

/// What a socket's kernel buffers should hold: a burst of a TCP window of
/// frames, read only between two of the guest's slices.
const SOCKET_BUFFER: usize = 4 << 20;

/// Ask for [`SOCKET_BUFFER`] both ways; the kernel caps it at
/// `net.core.rmem_max` and `wmem_max`.
fn room_for_bursts(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    for (what, set) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = set {
            tracing::debug!(%e, "cannot size the {what} buffer");
        }
    }
}

/// The forwarding logic, without sockets: which ports a frame goes to.
///
/// It keeps no clock: every call that needs the time is given it, as the
/// time since an origin the caller picks (the [`SwitchServer`]: when it
/// started; a simulator: its virtual time zero), so that the same logic
/// runs in real or virtual time.
#[derive(Default)]
pub struct Switch {
    /// Ports by id, with when each was last heard from; `None` once
    /// expired (ids are not reused).
    ports: Vec<Option<Duration>>,
    macs: HashMap<Mac, PortId>,
}

impl Switch {
    /// A new port, seen at `now`.
    pub fn attach(&mut self, now: Duration) -> PortId {
        self.ports.push(Some(now));
        self.ports.len() - 1
    }

    /// `port` said it is still there.
    pub fn touch(&mut self, port: PortId, now: Duration) {
        if let Some(seen @ Some(_)) = self.ports.get_mut(port) {
            *seen = Some(now);
        }
    }

    /// `port` is gone: it gets nothing more, and the addresses learned on
    /// it are forgotten (their frames are flooded until they appear again).
    pub fn detach(&mut self, port: PortId) {
        if let Some(seen) = self.ports.get_mut(port) {
            *seen = None;
        }
        self.macs.retain(|_, p| *p != port);
    }

    /// Detach the ports silent since `now - timeout`; they are returned.
    pub fn expire(&mut self, now: Duration, timeout: Duration) -> Vec<PortId> {
        let gone: Vec<PortId> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, seen)| seen.is_some_and(|t| now.saturating_sub(t) > timeout))
            .map(|(port, _)| port)
            .collect();
        for &port in &gone {
            self.detach(port);
        }
        gone
    }

    /// Where the MAC address `mac` was last seen.
    pub fn port_of(&self, mac: &Mac) -> Option<PortId> {
        self.macs.get(mac).copied()
    }

    /// A frame arrived on `from` at `now`: learn its source, and return the
    /// ports it goes out on (none for a runt).
    pub fn forward(&mut self, from: PortId, frame: &[u8], now: Duration) -> Vec<PortId> {
        if !matches!(self.ports.get(from), Some(Some(_))) {
            return Vec::new();
        }
        self.touch(from, now);
        let (Some(dst), Some(src)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
            return Vec::new();
        };
        if frame.len() < 14 {
            return Vec::new();
        }
        if !is_group(&src) {
            self.macs.insert(src, from);
        }
        if !is_group(&dst) {
            if let Some(port) = self.port_of(&dst) {
                return if port == from { Vec::new() } else { vec![port] };
            }
        }
        self.live_ports().filter(|&port| port != from).collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, seen)| seen.is_some())
            .map(|(port, _)| port)
    }

    /// How many ports are attached.
    pub fn port_count(&self) -> usize {
        self.live_ports().count()
    }
}

fn mac_at(frame: &[u8], at: usize) -> Option<Mac> {
    frame.get(at..at + 6)?.try_into().ok()
}

/// Broadcast and multicast addresses have the group bit set.
fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// The frame a VM that just went live broadcasts so that the network
/// learns its MAC address is now behind this port: a RARP request, as
/// VMware and QEMU (`announce-self`) send, which needs no IP address.
pub fn announcement(mac: Mac) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x80, 0x35]); // RARP
    frame.extend_from_slice(&[0x00, 0x01]); // Ethernet
    frame.extend_from_slice(&[0x08, 0x00]); // IPv4
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&[0x00, 0x03]); // reverse request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]);
    frame.resize(60, 0);
    frame
}

/// What wakes the switch's loop (epoll tokens).
const DATAGRAMS: mio::Token = mio::Token(0);
const GATEWAY_INPUT: mio::Token = mio::Token(1);

/// The switch as a UDP service, with its gateway on a port of its own.
pub struct SwitchServer {
    /// Non-blocking: read until empty, sends that find no room drop
    /// their frame as a full link would.
    socket: UdpSocket,
    /// The loop waits in epoll for a datagram or the gateway's host input
    /// (and at most a millisecond: the gateway's timers). A thread that
    /// received datagrams and then woke the loop cost a second wake-up,
    /// tens of microseconds, on every frame.
    poll: mio::Poll,
    events: mio::Events,
    buf: Vec<u8>,
    switch: Switch,
    /// The origin of the switch's time.
    started: Instant,
    ports: HashMap<SocketAddr, PortId>,
    addrs: HashMap<PortId, SocketAddr>,
    gateway: Option<(PortId, Box<dyn NetBackend>)>,
    /// Addresses that moved to another port (a backup's announcement), and
    /// ports detached for their silence: counted for the status line, so
    /// that a failover's effect on the network can be checked without
    /// reading the log.
    moves: u64,
    expired: u64,
    /// Datagrams dropped: failing the key's MAC or repeated (with a key),
    /// or sealed for a switch that has none.
    refused: u64,
    /// Frames from and to each port, by its name (`gateway`, or a VM
    /// port's UDP address), for the metrics: kept after a port detaches,
    /// so that counts never go back should it attach again.
    traffic: HashMap<String, PortTraffic>,
    auth: Option<Auth>,
}

/// Frames a port of the switch sent into it and was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTraffic {
    pub received: u64,
    pub delivered: u64,
}

impl SwitchServer {
    /// Listen on `addr` (port 0: any free port), with `gateway` (if any)
    /// attached, authenticating every datagram with `key` (if any).
    pub fn bind(
        addr: SocketAddr,
        mut gateway: Option<Box<dyn NetBackend>>,
        key: Option<DatagramKey>,
    ) -> Result<SwitchServer, NetError> {
        let fail = |e| NetError::Switch(addr.to_string(), e);
        let socket = UdpSocket::bind(addr).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        room_for_bursts(&socket);
        let poll = mio::Poll::new().map_err(fail)?;
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&socket.as_raw_fd()),
                DATAGRAMS,
                mio::Interest::READABLE,
            )
            .map_err(fail)?;
        if let Some(net) = gateway.as_mut() {
            net.watch_input(poll.registry(), GATEWAY_INPUT)
                .map_err(|e| NetError::Switch("the gateway's host sockets".into(), e))?;
        }
        let mut switch = Switch::default();
        let gateway = gateway.map(|net| (switch.attach(Duration::ZERO), net));
        Ok(SwitchServer {
            socket,
            poll,
            events: mio::Events::with_capacity(16),
            buf: vec![0; FRAME_MAX],
            switch,
            started: Instant::now(),
            ports: HashMap::new(),
            addrs: HashMap::new(),
            gateway,
            moves: 0,
            expired: 0,
            refused: 0,
            traffic: HashMap::new(),
            auth: Auth::new(key),
        })
    }

    /// How many datagrams were dropped as unauthenticated.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many VM ports are attached.
    pub fn vm_ports(&self) -> usize {
        self.ports.len()
    }

    /// The switch's time.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// How many times an address moved to another port.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Each port's frames, named `gateway` or by the VM port's UDP
    /// address, detached ones included.
    pub fn traffic(&self) -> Vec<(String, PortTraffic)> {
        let mut ports: Vec<(String, PortTraffic)> = self
            .traffic
            .iter()
            .map(|(name, traffic)| (name.clone(), *traffic))
            .collect();
        ports.sort_by(|a, b| a.0.cmp(&b.0));
        ports
    }

    /// The name a port's traffic is counted under.
    fn port_name(&self, port: PortId) -> Option<String> {
        if self
            .gateway
            .as_ref()
            .is_some_and(|(gateway, _)| *gateway == port)
        {
            return Some("gateway".to_string());
        }
        self.addrs.get(&port).map(SocketAddr::to_string)
    }

    /// How many VM ports were detached for their silence.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Serve for about `budget`: forward what arrives, run the gateway.
    pub fn serve_for(&mut self, budget: Duration) -> std::io::Result<()> {
        let until = Instant::now() + budget;
        loop {
            // What arrived goes through the gateway before the loop waits:
            // a datagram read while the gateway was polled, and queued for
            // it, would otherwise wait out the whole timeout below (a
            // guest's reply held 1 ms, at random, on its way to the host).
            self.receive()?;
            self.poll_gateway();
            let now = Instant::now();
            let since_start = now.duration_since(self.started);
            for port in self.switch.expire(since_start, PORT_TIMEOUT) {
                if let Some(addr) = self.addrs.remove(&port) {
                    tracing::warn!(%addr, "port gone silent: detached");
                    self.expired += 1;
                    self.ports.remove(&addr);
                }
            }
            if now >= until {
                return Ok(());
            }
            // The gateway's host sockets want looking at often; a frame
            // wakes the switch at once (the socket was read dry above, so
            // the next datagram is an edge).
            let wait = (until - now).min(Duration::from_millis(1));
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Forward every datagram that has arrived (readiness is
    /// edge-triggered: until none is left).
    fn receive(&mut self) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let received = loop {
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) => self.datagram(from, &buf[..len]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                // A VM's port that went away (ICMP port unreachable).
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        received
    }

    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let bytes = match &mut self.auth {
            Some(auth) => match auth.opener.open(bytes) {
                Some(frame) => frame,
                None => {
                    self.refused += 1;
                    tracing::debug!(%from, "an unauthenticated datagram: dropped");
                    return;
                }
            },
            None if is_sealed(bytes) => {
                if self.refused == 0 {
                    tracing::warn!(%from, "an authenticated datagram, and this switch has no key \
                        (start it with --key-file): dropped");
                }
                self.refused += 1;
                return;
            }
            None => bytes,
        };
        let now = self.now();
        let port = match self.ports.get(&from) {
            Some(&port) => port,
            None => {
                let port = self.switch.attach(now);
                tracing::info!(%from, port, "port attached");
                self.ports.insert(from, port);
                self.addrs.insert(port, from);
                port
            }
        };
        if bytes.is_empty() {
            self.switch.touch(port, now);
            return;
        }
        let moved = mac_at(bytes, 6)
            .filter(|src| !is_group(src) && self.switch.port_of(src).is_some_and(|p| p != port));
        self.traffic.entry(from.to_string()).or_default().received += 1;
        let out = self.switch.forward(port, bytes, now);
        if let Some(mac) = moved {
            tracing::warn!(mac = %format_mac(&mac), %from, "address moved to another port");
            self.moves += 1;
        }
        self.deliver(&out, bytes);
    }

    fn deliver(&mut self, out: &[PortId], frame: &[u8]) {
        for &port in out {
            if let Some(name) = self.port_name(port) {
                self.traffic.entry(name).or_default().delivered += 1;
            }
            if let Some((gateway_port, gateway)) = &mut self.gateway {
                if port == *gateway_port {
                    gateway.send(frame);
                    continue;
                }
            }
            if let Some(addr) = self.addrs.get(&port) {
                let sealed;
                let datagram = match &mut self.auth {
                    Some(auth) => {
                        sealed = auth.sealer.seal(frame);
                        &sealed[..]
                    }
                    None => frame,
                };
                if let Err(e) = self.socket.send_to(datagram, addr) {
                    tracing::debug!(%addr, %e, "frame not delivered");
                }
            }
        }
    }

    fn poll_gateway(&mut self) {
        let Some((port, gateway)) = &mut self.gateway else {
            return;
        };
        let port = *port;
        let frames = gateway.poll();
        let now = self.now();
        self.switch.touch(port, now);
        for frame in frames {
            self.traffic
                .entry("gateway".to_string())
                .or_default()
                .received += 1;
            let out = self.switch.forward(port, &frame, now);
            self.deliver(&out, &frame);
        }
    }
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A VM's port on a [`SwitchServer`].
pub struct SwitchPort {
    socket: UdpSocket,
    switch: SocketAddr,
    last_sent: Instant,
    buf: Vec<u8>,
    key: Option<DatagramKey>,
    auth: Option<Auth>,
}

impl SwitchPort {
    /// Attach to the switch at `switch`, sealing with `key` (the switch's
    /// own, if it has one).
    pub fn connect(switch: SocketAddr, key: Option<DatagramKey>) -> Result<SwitchPort, NetError> {
        let fail = |e| NetError::Switch(switch.to_string(), e);
        let local: SocketAddr = match switch {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(fail)?;
        socket.connect(switch).map_err(fail)?;
        room_for_bursts(&socket);
        let mut port = SwitchPort {
            socket,
            switch,
            last_sent: Instant::now(),
            buf: vec![0; FRAME_MAX],
            auth: Auth::new(key.clone()),
            key,
        };
        port.send_datagram(&[]).map_err(fail)?;
        Ok(port)
    }

    /// Send `frame` (empty: "still here"), sealed when there is a key.
    fn send_datagram(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.last_sent = Instant::now();
        match &mut self.auth {
            Some(auth) => self.socket.send(&auth.sealer.seal(frame)).map(|_| ()),
            None => self.socket.send(frame).map(|_| ()),
        }
    }

    /// The frame in a received datagram, or `None` for a keepalive or
    /// one that fails authentication.
    fn frame_of(&mut self, len: usize) -> Option<Vec<u8>> {
        let datagram = &self.buf[..len];
        let frame = match &mut self.auth {
            Some(auth) => auth.opener.open(datagram)?,
            None if is_sealed(datagram) => return None,
            None => datagram,
        };
        (!frame.is_empty()).then(|| frame.to_vec())
    }

    /// A second handle on the same port: one sends the guest's frames,
    /// the other ([`crate::FrameReceiver`]) takes the frames for it.
    pub fn try_clone(&self) -> std::io::Result<SwitchPort> {
        Ok(SwitchPort {
            socket: self.socket.try_clone()?,
            switch: self.switch,
            last_sent: Instant::now(),
            buf: vec![0; FRAME_MAX],
            auth: Auth::new(self.key.clone()),
            key: self.key.clone(),
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// The frames that have arrived, without waiting (see
    /// [`crate::FrameReceiver`]); says "still here" when it is time. Each
    /// receive alone is non-blocking (`MSG_DONTWAIT`): the socket, shared
    /// with the handle that sends, stays blocking for its sends.
    pub(crate) fn recv_ready(&mut self, frames: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
        self.keepalive();
        loop {
            match crate::nowait::recv(&self.socket, &mut self.buf) {
                Ok(len) => frames.extend(self.frame_of(len)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The switch is not (yet, or any more) there: a cable to a
                // switch that restarts stays plugged in. The error is
                // reported once, before any datagram queued behind it.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn keepalive(&mut self) {
        if self.last_sent.elapsed() >= KEEPALIVE {
            let _ = self.send_datagram(&[]);
        }
    }
}

impl NetBackend for SwitchPort {
    fn send(&mut self, frame: &[u8]) {
        // A lost datagram is a lost frame, which the guest's protocols
        // are built for.
        if let Err(e) = self.send_datagram(frame) {
            tracing::debug!(switch = %self.switch, %e, "frame not sent");
        }
    }

    fn poll(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        if let Err(e) = self.recv_ready(&mut frames) {
            tracing::debug!(switch = %self.switch, %e, "receiving from the switch");
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
    const BROADCAST: Mac = [0xff; 6];

    /// The next frame for `port`, taken as a VM's loop takes them.
    fn next_frame(port: &mut SwitchPort) -> Vec<u8> {
        // A bound on a hang, not a timing claim.
        let start = Instant::now();
        loop {
            let mut frames = Vec::new();
            port.recv_ready(&mut frames).unwrap();
            if let Some(frame) = frames.into_iter().next() {
                return frame;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no frame came");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn floods_unknown_destinations_then_learns_them() {
        let now = Duration::ZERO;
        let mut switch = Switch::default();
        let (p0, p1, p2) = (switch.attach(now), switch.attach(now), switch.attach(now));
        assert_eq!(switch.forward(p0, &frame(B, A), now), vec![p1, p2]);
        assert_eq!(switch.forward(p1, &frame(A, B), now), vec![p0]);
        assert_eq!(switch.forward(p0, &frame(B, A), now), vec![p1]);
        assert_eq!(switch.forward(p0, &frame(BROADCAST, A), now), vec![p1, p2]);
        // A frame for a station on the port it came from stays there.
        assert_eq!(switch.forward(p0, &frame(A, A), now), Vec::<PortId>::new());
    }

    #[test]
    fn an_announcement_moves_the_address_to_the_announcing_port() {
        let now = Duration::ZERO;
        let mut switch = Switch::default();
        let (gateway, primary, backup) =
            (switch.attach(now), switch.attach(now), switch.attach(now));
        switch.forward(primary, &frame(BROADCAST, A), now);
        assert_eq!(switch.forward(gateway, &frame(A, B), now), vec![primary]);
        let out = switch.forward(backup, &announcement(A), now);
        assert_eq!(
            out,
            vec![gateway, primary],
            "the announcement is a broadcast"
        );
        assert_eq!(switch.port_of(&A), Some(backup));
        assert_eq!(switch.forward(gateway, &frame(A, B), now), vec![backup]);
    }

    #[test]
    fn a_silent_port_expires_and_its_addresses_are_flooded_again() {
        let start = Duration::ZERO;
        let mut switch = Switch::default();
        let (p0, p1, p2) = (
            switch.attach(start),
            switch.attach(start),
            switch.attach(start),
        );
        switch.forward(p1, &frame(BROADCAST, A), start);
        let later = start + Duration::from_secs(5);
        switch.touch(p0, later);
        switch.touch(p2, later);
        assert_eq!(switch.expire(later, Duration::from_secs(3)), vec![p1]);
        assert_eq!(switch.port_of(&A), None);
        assert_eq!(switch.forward(p0, &frame(A, B), later), vec![p2]);
        assert_eq!(switch.port_count(), 2);
        // A detached port's frames are not forwarded.
        assert!(switch.forward(p1, &frame(B, A), later).is_empty());
    }

    #[test]
    fn runts_and_group_sources_are_not_learned() {
        let now = Duration::ZERO;
        let mut switch = Switch::default();
        let (p0, _p1) = (switch.attach(now), switch.attach(now));
        assert!(switch.forward(p0, &[0xff; 10], now).is_empty());
        switch.forward(p0, &frame(B, BROADCAST), now);
        assert_eq!(switch.port_of(&BROADCAST), None);
    }

    #[test]
    fn the_announcement_is_a_rarp_request_for_the_mac() {
        let f = announcement(A);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &A);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &A);
        assert_eq!(&f[32..38], &A);
    }

    #[test]
    fn frames_cross_the_switch_over_udp_between_two_ports() {
        let mut server = SwitchServer::bind("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
        let addr = server.local_addr().unwrap();
        let mut a = SwitchPort::connect(addr, None).unwrap();
        let mut b = SwitchPort::connect(addr, None).unwrap();
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(server.vm_ports(), 2);
        let hello = frame(BROADCAST, A);
        a.send(&hello);
        server.serve_for(Duration::from_millis(50)).unwrap();
        let mut got = b.try_clone().unwrap();
        assert_eq!(next_frame(&mut got), hello);
        assert!(
            a.poll().is_empty(),
            "a broadcast does not return to its sender"
        );
        let reply = frame(A, B);
        b.send(&reply);
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(next_frame(&mut a.try_clone().unwrap()), reply);
        assert_eq!((server.moves(), server.expired()), (0, 0));
        // Each port sent one frame and was given one; the keepalives that
        // attached them are not frames.
        let traffic = server.traffic();
        assert_eq!(traffic.len(), 2, "{traffic:?}");
        for (_, t) in traffic {
            assert_eq!((t.received, t.delivered), (1, 1));
        }
    }

    #[test]
    fn an_announcement_from_another_port_counts_as_a_move() {
        let mut server = SwitchServer::bind("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
        let addr = server.local_addr().unwrap();
        let mut a = SwitchPort::connect(addr, None).unwrap();
        let mut b = SwitchPort::connect(addr, None).unwrap();
        a.send(&frame(BROADCAST, A));
        server.serve_for(Duration::from_millis(50)).unwrap();
        // Again from the same port: not a move.
        a.send(&frame(BROADCAST, A));
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(server.moves(), 0);
        b.send(&announcement(A));
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!((server.moves(), server.expired()), (1, 0));
    }

    /// With the pair's key, a port with the key gets the frames of another,
    /// and a process without it can neither inject a frame nor attach:
    /// what it sends is refused and counted.
    #[test]
    fn with_a_key_only_ports_that_hold_it_are_on_the_network() {
        let key = || Some(DatagramKey::from_pair_key(&[7; 32]));
        let mut server = SwitchServer::bind("127.0.0.1:0".parse().unwrap(), None, key()).unwrap();
        let addr = server.local_addr().unwrap();
        let mut a = SwitchPort::connect(addr, key()).unwrap();
        let mut b = SwitchPort::connect(addr, key()).unwrap();
        let mut stranger = SwitchPort::connect(addr, None).unwrap();
        let mut wrong =
            SwitchPort::connect(addr, Some(DatagramKey::from_pair_key(&[8; 32]))).unwrap();
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(server.vm_ports(), 2, "only the ports with the key attach");
        let refused = server.refused();
        assert!(refused >= 2, "the strangers' hellos: {refused}");
        stranger.send(&frame(BROADCAST, B));
        wrong.send(&frame(BROADCAST, B));
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(server.refused(), refused + 2);
        assert!(
            a.poll().is_empty() && b.poll().is_empty(),
            "nothing injected"
        );
        let hello = frame(BROADCAST, A);
        a.send(&hello);
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(next_frame(&mut b.try_clone().unwrap()), hello);
        assert!(stranger.poll().is_empty() && wrong.poll().is_empty());
        // A datagram replayed to the switch is refused too.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sealer = Sealer::new(DatagramKey::from_pair_key(&[7; 32]), 99);
        let sealed = sealer.seal(&frame(BROADCAST, B));
        socket.send_to(&sealed, addr).unwrap();
        socket.send_to(&sealed, addr).unwrap();
        let before = server.refused();
        server.serve_for(Duration::from_millis(50)).unwrap();
        assert_eq!(server.refused(), before + 1, "the second copy");
    }

    /// Frames arriving more often than the keepalive period must not keep
    /// a port from saying "still here".
    #[test]
    fn a_port_that_only_receives_still_keeps_alive() {
        let switch = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = SwitchPort::connect(switch.local_addr().unwrap(), None).unwrap();
        let mut hello = [0u8; 64];
        let (len, port_addr) = switch.recv_from(&mut hello).unwrap();
        assert_eq!(len, 0, "the hello is empty");
        let mut receiving = port.try_clone().unwrap();
        // As a VM's loop takes them: whenever it turns.
        std::thread::spawn(move || {
            let mut frames = Vec::new();
            while receiving.recv_ready(&mut frames).is_ok() {
                frames.clear();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        switch
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let start = Instant::now();
        let mut keepalives = 0;
        while start.elapsed() < KEEPALIVE * 3 {
            switch.send_to(&frame(A, B), port_addr).unwrap();
            if let Ok((0, _)) = switch.recv_from(&mut hello) {
                keepalives += 1;
            }
        }
        assert!(keepalives >= 1, "no keepalive in {:?}", start.elapsed());
    }
}
