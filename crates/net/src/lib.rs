//! # ftvm-net — the host side of a VM's network
//!
//! A VM's network card exchanges Ethernet frames with a [`NetBackend`]. The
//! machine never sees the host network: transmitted frames are outputs the
//! host hands to a backend, received frames are inputs the host injects
//! (ARCHITECTURE.md, "The input boundary"). Behind this narrow,
//! frame-level interface the gateway can live outside the VM's process (a
//! pair's switch, ARCHITECTURE.md, "The pair's network"), so a backup that
//! goes live keeps the clients' connections.
//!
//! [`UserNet`] is the user-mode backend, like QEMU's `-netdev user`: a small
//! TCP/IP endpoint on the host (smoltcp) at the gateway address 10.0.2.2 of
//! the guest's network 10.0.2.0/24 (the guest is 10.0.2.15). It offers
//! * port forwarding: a host TCP port (`hostfwd=tcp:127.0.0.1:8080-:80`)
//!   whose connections are relayed to a guest port. A guest that resets
//!   the connection, or has nothing listening on the port, resets the
//!   host's client too: it reads an error, not a clean empty answer;
//! * guest connections to 10.0.2.2:PORT, relayed to the host's
//!   127.0.0.1:PORT (QEMU's slirp gives the host loopback the same way).
//!
//! It needs no privileges. IPv4 TCP only (no UDP, DNS or ICMP yet).
//!
//! [`Tap`] (Linux) connects the card to a TAP interface of the host.
//!
//! [`switch`] is the network of an FT pair: a switch in a process of its
//! own, with the user-mode gateway on one of its ports, that the VMs of a
//! pair reach over UDP ([`switch::SwitchPort`]). [`attach`] opens the
//! backends that live outside the VM's process, split in a half that
//! sends and one the VM's loop takes frames from.

#![deny(unsafe_code)]

pub mod datagram;
// A receive that does not wait, on a socket that does (recv(2) with a
// flag), and TAP's ioctl(2): the crate's only unsafe code.
#[allow(unsafe_code)]
pub mod nowait;
mod readiness;
pub mod switch;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod tap;
#[cfg(target_os = "linux")]
pub use tap::{Tap, TapReceiver};

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// Where a VM's frames go and come from.
pub trait NetBackend: Send {
    /// A frame the guest transmitted.
    fn send(&mut self, frame: &[u8]);
    /// Do pending host work; frames for the guest.
    fn poll(&mut self) -> Vec<Vec<u8>>;
    /// Put the host sockets whose input [`poll`](Self::poll) handles in
    /// the polling loop's epoll (`registry`), reported as `token`, so the
    /// loop can sleep until then rather than answer late. Backends whose
    /// frames come through a [`FrameReceiver`] have nothing to add.
    fn watch_input(&mut self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        let _ = (registry, token);
        Ok(())
    }
}

/// The guest's address on the user-mode network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway's (the host's) address.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// Each way of a relayed connection: eight segments of the largest MTU in
/// flight, so a sender does not wait for each acknowledgement.
const BUFFER: usize = 512 << 10;
/// The most polls of the gateway's stack in one [`NetBackend::poll`]: each
/// sends at most one segment per socket.
const EGRESS_ROUNDS: usize = 64;

/// The largest MTU a card may have: a frame of it, with its Ethernet
/// header, fits in one datagram of a pair's switch, with the datagram's
/// seal (65,507 bytes of UDP payload at most).
pub const MTU_MAX: u16 = 65280;
/// The smallest: IPv4's minimum (Linux refuses a card below it).
pub const MTU_MIN: u16 = 68;
/// A card's MTU on the user-mode network or a switch when `mtu=` does not
/// say: the largest, as on a host's loopback. Both ends of every link are
/// ftvm's, so nothing on the way needs Ethernet's 1,500 bytes; the guest's
/// TCP sends 64 KiB segments where it sent 1,448 bytes, and each layer
/// (the guest's network stack, the log, the switch's datagrams) handles a
/// 45th of the packets (ARCHITECTURE.md, "The pair's network").
pub const LINK_MTU: u16 = MTU_MAX;
/// A card's MTU on a TAP interface when `mtu=` does not say: Ethernet's,
/// as the host's bridge and the networks behind it expect.
pub const ETHERNET_MTU: u16 = 1500;

/// A forwarded port: connections to `host` are relayed to the guest's
/// `guest_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub host: SocketAddr,
    pub guest_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad --net option `{0}`: {1}")]
    Option(String, String),
    #[error("cannot listen on {0} for port forwarding: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot attach to TAP interface {0}: {1}")]
    Tap(String, std::io::Error),
    #[error("cannot use the switch at {0}: {1}")]
    Switch(String, std::io::Error),
}

/// A `--net` option, QEMU style.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub kind: NetKind,
    /// The MTU of the guest's card: `mtu=N`, else [`LINK_MTU`] on the
    /// user-mode network and a switch, [`ETHERNET_MTU`] on TAP.
    pub mtu: u16,
}

/// Which network a card is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetKind {
    /// `user[,hostfwd=tcp:HOSTADDR:HOSTPORT-:GUESTPORT]...`
    User(Vec<HostForward>),
    /// `tap,ifname=NAME`
    Tap(String),
    /// `switch:HOST:PORT`: a port on a [`switch::SwitchServer`].
    Switch(SocketAddr),
}

/// Parse a `--net` option: a network, and `,mtu=N` if given.
pub fn parse_net(spec: &str) -> Result<NetSpec, NetError> {
    let (rest, mtu) = take_mtu(spec)?;
    let kind = parse_kind(&rest)?;
    let mtu = mtu.unwrap_or(match kind {
        NetKind::Tap(_) => ETHERNET_MTU,
        NetKind::User(_) | NetKind::Switch(_) => LINK_MTU,
    });
    Ok(NetSpec { kind, mtu })
}

/// `spec` without its `mtu=N` option, and N.
fn take_mtu(spec: &str) -> Result<(String, Option<u16>), NetError> {
    let mut mtu = None;
    let mut rest = Vec::new();
    for part in spec.split(',') {
        match part.strip_prefix("mtu=") {
            Some(value) => {
                let value = value
                    .parse::<u16>()
                    .ok()
                    .filter(|m| (MTU_MIN..=MTU_MAX).contains(m))
                    .ok_or_else(|| {
                        NetError::Option(
                            spec.to_string(),
                            format!("mtu= takes {MTU_MIN} to {MTU_MAX}"),
                        )
                    })?;
                mtu = Some(value);
            }
            None => rest.push(part),
        }
    }
    Ok((rest.join(","), mtu))
}

fn parse_kind(spec: &str) -> Result<NetKind, NetError> {
    if let Some(addr) = spec.strip_prefix("switch:") {
        return std::net::ToSocketAddrs::to_socket_addrs(addr)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(NetKind::Switch)
            .ok_or_else(|| NetError::Option(spec.to_string(), "expected switch:HOST:PORT".into()));
    }
    if let Some(rest) = spec.strip_prefix("tap") {
        return rest
            .strip_prefix(",ifname=")
            .filter(|name| !name.is_empty() && !name.contains(','))
            .map(|name| NetKind::Tap(name.to_string()))
            .ok_or_else(|| NetError::Option(spec.to_string(), "expected tap,ifname=NAME".into()));
    }
    parse_user_options(spec).map(NetKind::User)
}

/// Open the backend a [`NetSpec`] names.
pub fn open(spec: &NetSpec) -> Result<Box<dyn NetBackend>, NetError> {
    match &spec.kind {
        NetKind::User(forwards) => Ok(Box::new(UserNet::new(forwards)?)),
        NetKind::Switch(addr) => Ok(Box::new(switch::SwitchPort::connect(*addr, None)?)),
        #[cfg(target_os = "linux")]
        NetKind::Tap(name) => Ok(Box::new(Tap::open(name)?)),
        #[cfg(not(target_os = "linux"))]
        NetKind::Tap(name) => Err(NetError::Tap(
            name.clone(),
            std::io::Error::other("TAP is only supported on Linux"),
        )),
    }
}

/// The frames of a backend that lives outside the VM's process, for a
/// loop that waits in epoll on [`fd`](Self::fd) and then takes what came
/// (a thread in between would cost a second wake-up per frame).
pub trait FrameReceiver: Send {
    /// The descriptor that becomes readable when a frame arrives.
    fn fd(&self) -> std::os::fd::RawFd;
    /// Append the frames that have arrived, without waiting. Readiness is
    /// edge-triggered: this reads until nothing is left. The loop calls it
    /// at least every second, for the backend's upkeep (a switch port's
    /// "still here").
    fn recv_ready(&mut self, frames: &mut Vec<Vec<u8>>) -> std::io::Result<()>;
}

impl FrameReceiver for switch::SwitchPort {
    fn fd(&self) -> std::os::fd::RawFd {
        switch::SwitchPort::fd(self)
    }
    fn recv_ready(&mut self, frames: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
        switch::SwitchPort::recv_ready(self, frames)
    }
}

/// The two halves of an attachment: where the guest's frames go, and
/// where the loop takes the frames for it.
pub type Attached = (Box<dyn NetBackend>, Box<dyn FrameReceiver>);

/// Attach to a network that outlives this process — a switch port or a
/// TAP interface — as a sender and a receiver of frames. The user-mode
/// network lives in the VM's process, so it is refused: it would die
/// with the VM, and the clients' connections with it. A switch port seals
/// its datagrams with `key` (the pair's switch key).
pub fn attach(spec: &NetSpec, key: Option<datagram::DatagramKey>) -> Result<Attached, NetError> {
    match &spec.kind {
        NetKind::User(_) => Err(NetError::Option(
            "user".into(),
            "a VM of a pair needs a network that outlives it: `switch:HOST:PORT` (see \
             `ftvm switch`) or `tap,ifname=NAME`"
                .into(),
        )),
        NetKind::Switch(addr) => {
            let port = switch::SwitchPort::connect(*addr, key)?;
            let receiver = port
                .try_clone()
                .map_err(|e| NetError::Switch(addr.to_string(), e))?;
            Ok((Box::new(port), Box::new(receiver)))
        }
        #[cfg(target_os = "linux")]
        NetKind::Tap(name) => {
            let tap = Tap::open(name)?;
            let receiver = tap.receiver().map_err(|e| NetError::Tap(name.clone(), e))?;
            Ok((Box::new(tap), Box::new(receiver)))
        }
        #[cfg(not(target_os = "linux"))]
        NetKind::Tap(name) => Err(NetError::Tap(
            name.clone(),
            std::io::Error::other("TAP is only supported on Linux"),
        )),
    }
}

/// Parse QEMU-style user network options: `user[,hostfwd=tcp:ADDR:PORT-:GPORT]...`.
pub fn parse_user_options(spec: &str) -> Result<Vec<HostForward>, NetError> {
    let bad = |why: &str| NetError::Option(spec.to_string(), why.to_string());
    let mut parts = spec.split(',');
    if parts.next() != Some("user") {
        return Err(bad(
            "expected `user[,hostfwd=...]`, `tap,ifname=NAME` or `switch:HOST:PORT`",
        ));
    }
    parts
        .map(|part| {
            let rule = part
                .strip_prefix("hostfwd=tcp:")
                .ok_or_else(|| bad("expected hostfwd=tcp:HOSTADDR:HOSTPORT-:GUESTPORT"))?;
            let (host, guest) = rule
                .split_once("-:")
                .ok_or_else(|| bad("expected HOSTADDR:HOSTPORT-:GUESTPORT"))?;
            let host = if host.starts_with(':') {
                format!("127.0.0.1{host}")
            } else {
                host.to_string()
            };
            Ok(HostForward {
                host: host.parse().map_err(|_| bad("bad host address"))?,
                guest_port: guest.parse().map_err(|_| bad("bad guest port"))?,
            })
        })
        .collect()
}

/// The frames between the smoltcp interface and the VM.
#[derive(Default)]
struct Frames {
    to_gateway: VecDeque<Vec<u8>>,
    to_guest: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

impl Device for Frames {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.to_gateway.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.to_guest)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.to_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // The largest any card may have: TCP's MSS option tells each end
        // what the other's card takes.
        caps.max_transmission_unit = usize::from(MTU_MAX) + 14;
        caps
    }
}

/// One relayed TCP connection: a smoltcp socket toward the guest and a
/// host socket.
struct Relay {
    socket: SocketHandle,
    /// `None` until a guest-initiated connection is established.
    host: Option<TcpStream>,
    /// For guest-initiated connections: the host port to connect to.
    host_port: Option<u16>,
    to_guest: Vec<u8>,
    to_host: Vec<u8>,
    host_eof: bool,
    guest_eof: bool,
    /// The host's end failed (its peer reset or went away): the guest's
    /// end was reset and the relay ends at the next turn, once the reset
    /// has left.
    reset_guest: bool,
}

pub struct UserNet {
    iface: Interface,
    sockets: SocketSet<'static>,
    frames: Frames,
    start: std::time::Instant,
    forwards: Vec<(TcpListener, u16)>,
    relays: Vec<Relay>,
    /// Sockets listening for guest connections to the gateway, by port.
    listening: HashMap<u16, SocketHandle>,
    next_local_port: u16,
    /// Wakes the polling loop on host input, once asked to.
    readiness: Option<readiness::HostReadiness>,
    /// Where relays read into, allocated once: the loop polls every turn,
    /// and a fresh zeroed buffer of this size is a fresh mapping, its
    /// pages faulted in again on every poll (11-13% of the samples of a VM
    /// answering echoes 20 ms apart; ARCHITECTURE.md, "The pair's
    /// network").
    scratch: Vec<u8>,
}

impl UserNet {
    pub fn new(forwards: &[HostForward]) -> Result<UserNet, NetError> {
        let mut frames = Frames::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = 0x6674_766d;
        let mut iface = Interface::new(config, &mut frames, Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), 24));
        });
        let listeners = forwards
            .iter()
            .map(|f| {
                let listener =
                    TcpListener::bind(f.host).map_err(|e| NetError::Listen(f.host, e))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| NetError::Listen(f.host, e))?;
                Ok((listener, f.guest_port))
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        Ok(UserNet {
            iface,
            sockets: SocketSet::new(Vec::new()),
            frames,
            start: std::time::Instant::now(),
            forwards: listeners,
            relays: Vec::new(),
            listening: HashMap::new(),
            next_local_port: 49152,
            readiness: None,
            scratch: vec![0; BUFFER],
        })
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn new_socket(&mut self) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER]),
            tcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        // A relay, not an application: the host's client (and its kernel's
        // own Nagle) already chose how to cut its bytes. Holding a short
        // last segment until the guest acknowledges the one before it met
        // the guest's delayed ACK, and every message longer than a segment
        // stalled 40 ms.
        socket.set_nagle_enabled(false);
        self.sockets.add(socket)
    }

    /// A guest SYN to a gateway port nobody listens on yet gets a
    /// listening socket first, so any port can be relayed to the host.
    fn listen_for(&mut self, frame: &[u8]) {
        let Some(port) = syn_to_gateway_port(frame) else {
            return;
        };
        if self.listening.contains_key(&port) {
            return;
        }
        let handle = self.new_socket();
        if self
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .listen(port)
            .is_ok()
        {
            self.listening.insert(port, handle);
            self.relays.push(Relay {
                socket: handle,
                host: None,
                host_port: Some(port),
                to_guest: Vec::new(),
                to_host: Vec::new(),
                host_eof: false,
                guest_eof: false,
                reset_guest: false,
            });
        } else {
            self.sockets.remove(handle);
        }
    }

    fn accept_forwards(&mut self) {
        let mut accepted = Vec::new();
        for (listener, guest_port) in &self.forwards {
            while let Ok((stream, _)) = listener.accept() {
                accepted.push((stream, *guest_port));
            }
        }
        for (stream, guest_port) in accepted {
            if prepare_host_stream(&stream, self.readiness.as_ref()).is_err() {
                continue;
            }
            let handle = self.new_socket();
            let local = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(49152);
            let connected = self.sockets.get_mut::<tcp::Socket>(handle).connect(
                self.iface.context(),
                (IpAddress::Ipv4(GUEST_IP), guest_port),
                local,
            );
            if connected.is_err() {
                self.sockets.remove(handle);
                continue;
            }
            self.relays.push(Relay {
                socket: handle,
                host: Some(stream),
                host_port: None,
                to_guest: Vec::new(),
                to_host: Vec::new(),
                host_eof: false,
                guest_eof: false,
                reset_guest: false,
            });
        }
    }

    /// Move bytes between each relay's two sockets; drop finished relays.
    fn relay(&mut self) {
        let buf = &mut self.scratch;
        let listening = &mut self.listening;
        let sockets = &mut self.sockets;
        let readiness = self.readiness.as_ref();
        self.relays.retain_mut(|relay| {
            if relay.reset_guest {
                sockets.remove(relay.socket);
                return false;
            }
            let socket = sockets.get_mut::<tcp::Socket>(relay.socket);
            // A guest connection to the gateway: reach the host port once
            // the guest's handshake is done.
            if relay.host.is_none() {
                let Some(port) = relay.host_port else {
                    return false;
                };
                match socket.state() {
                    tcp::State::Listen | tcp::State::SynReceived => return true,
                    tcp::State::Established => {}
                    _ => {
                        listening.remove(&port);
                        sockets.remove(relay.socket);
                        return false;
                    }
                }
                listening.remove(&port);
                let target = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                match TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .and_then(|s| prepare_host_stream(&s, readiness).map(|()| s))
                {
                    Ok(stream) => relay.host = Some(stream),
                    Err(e) => {
                        tracing::debug!(port, %e, "guest connection to the host refused");
                        socket.abort();
                        return true;
                    }
                }
            }
            let Some(stream) = relay.host.as_mut() else {
                return !matches!(socket.state(), tcp::State::Closed);
            };
            // Host -> guest.
            if relay.to_guest.is_empty() && !relay.host_eof {
                match stream.read(buf) {
                    Ok(0) => relay.host_eof = true,
                    Ok(n) => relay.to_guest.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::debug!(%e, "host side of a relay failed");
                        return reset_guest(socket, relay);
                    }
                }
                tracing::trace!(
                    host_eof = relay.host_eof,
                    pending = relay.to_guest.len(),
                    "host read"
                );
            }
            if !relay.to_guest.is_empty() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&relay.to_guest) {
                    relay.to_guest.drain(..n);
                }
            }
            if relay.host_eof && relay.to_guest.is_empty() && socket.may_send() {
                socket.close();
            }
            // Guest -> host.
            while socket.can_recv() {
                match socket.recv_slice(buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => relay.to_host.extend_from_slice(&buf[..n]),
                }
            }
            if !relay.to_host.is_empty() {
                match stream.write(&relay.to_host) {
                    Ok(n) => {
                        relay.to_host.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::debug!(%e, "host side of a relay failed");
                        return reset_guest(socket, relay);
                    }
                }
            }
            // Closed while the host side is still open means the guest reset
            // the connection or never accepted it (a smoltcp socket reaches
            // Closed without a reset only after both ends closed). The
            // host's client is told with a reset too, once what the guest
            // sent is delivered, instead of a clean end it would read as a
            // short answer.
            let reset = socket.state() == tcp::State::Closed && !relay.host_eof;
            if reset && relay.to_host.is_empty() {
                tracing::debug!("the guest reset a relayed connection");
                let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
                sockets.remove(relay.socket);
                return false;
            }
            // The guest closed its side (not: the handshake is not done yet).
            let guest_closed = matches!(
                socket.state(),
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            );
            if guest_closed && !reset && relay.to_host.is_empty() && !relay.guest_eof {
                relay.guest_eof = true;
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
                && relay.to_host.is_empty();
            if done {
                sockets.remove(relay.socket);
            }
            !done
        });
    }
}

/// The host's end of a relay failed: its client reset the connection, or
/// closed it and the guest still sends (a write after the close is
/// refused). The guest is told with a reset, as a host's own stack would
/// answer; quietly acknowledging and dropping its bytes instead kept a
/// guest's sender streaming forever to nobody. Keeps the relay for the
/// next poll, which sends the reset.
fn reset_guest(socket: &mut tcp::Socket, relay: &mut Relay) -> bool {
    socket.abort();
    relay.reset_guest = true;
    relay.to_guest.clear();
    relay.to_host.clear();
    true
}

impl NetBackend for UserNet {
    fn send(&mut self, frame: &[u8]) {
        tracing::trace!(len = frame.len(), summary = %summary(frame), "frame from the guest");
        self.listen_for(frame);
        self.frames.to_gateway.push_back(frame.to_vec());
    }

    fn poll(&mut self) -> Vec<Vec<u8>> {
        self.accept_forwards();
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.relay();
        // smoltcp sends at most one segment per socket per poll: poll until
        // nothing more goes out, or a message of several segments leaves
        // one segment now and the rest at the next turn of the loop (in the
        // pair's switch, that was the guest's acknowledgement, 0.6 ms later
        // for a 4 KiB message). Bounded: a window is at most a few dozen
        // segments.
        for _ in 0..EGRESS_ROUNDS {
            let now = self.now();
            if self.iface.poll(now, &mut self.frames, &mut self.sockets) == PollResult::None {
                break;
            }
        }
        let frames = std::mem::take(&mut self.frames.to_guest);
        for frame in &frames {
            tracing::trace!(len = frame.len(), summary = %summary(frame), "frame to the guest");
        }
        frames
    }

    fn watch_input(&mut self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        let readiness = readiness::HostReadiness::new(registry, token)?;
        for (listener, _) in &self.forwards {
            readiness.watch(listener)?;
        }
        for relay in &self.relays {
            if let Some(stream) = &relay.host {
                readiness.watch(stream)?;
            }
        }
        self.readiness = Some(readiness);
        Ok(())
    }
}

/// A one-line description of a frame, for traces.
fn summary(frame: &[u8]) -> String {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => "arp".into(),
        Some([0x08, 0x00]) => tcp_summary(frame).unwrap_or_else(|| "ipv4".into()),
        _ => "other".into(),
    }
}

/// The IPv4 header and the TCP segment of an Ethernet frame carrying IPv4
/// TCP; `None` for anything else, a malformed guest frame included.
fn ipv4_tcp(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    if *ip.get(9)? != 6 {
        return None;
    }
    let tcp = ip.get(usize::from(ip.first()? & 0x0f) * 4..)?;
    Some((ip, tcp))
}

/// A relay's host socket: polled, never waited on, and without Nagle's
/// algorithm. The relay writes each guest segment as it comes; with Nagle
/// the host kernel held a message's short last segment until the client
/// acknowledged the one before it, the client delayed that acknowledgement
/// (40 ms on Linux), and every answer longer than one segment stalled. The
/// guest's own TCP stack already decided how to cut its bytes. Its input
/// wakes the polling loop, once that asked for it.
fn prepare_host_stream(
    stream: &TcpStream,
    readiness: Option<&readiness::HostReadiness>,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    readiness.map_or(Ok(()), |r| r.watch(stream))
}

/// Ports, flags and payload length of an IPv4 TCP frame.
fn tcp_summary(frame: &[u8]) -> Option<String> {
    let (_, tcp) = ipv4_tcp(frame)?;
    Some(format!(
        "tcp {} -> {} flags {:#04x} payload {}",
        u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]),
        u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]),
        tcp.get(13)?,
        tcp_payload_len(tcp)?
    ))
}

/// The bytes after a TCP segment's header (and its options).
fn tcp_payload_len(tcp: &[u8]) -> Option<usize> {
    let header = usize::from(tcp.get(12)? >> 4) * 4;
    Some(tcp.len().saturating_sub(header))
}

/// The destination port of an IPv4 TCP SYN (without ACK) to the gateway.
fn syn_to_gateway_port(frame: &[u8]) -> Option<u16> {
    let (ip, tcp) = ipv4_tcp(frame)?;
    if ip.get(16..20)? != GATEWAY_IP.octets() {
        return None;
    }
    let flags = *tcp.get(13)?;
    (flags & 0x12 == 0x02).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_qemu_style() {
        assert_eq!(
            parse_user_options("user,hostfwd=tcp:127.0.0.1:8080-:80").expect("parses"),
            vec![HostForward {
                host: "127.0.0.1:8080".parse().expect("addr"),
                guest_port: 80
            }]
        );
        assert_eq!(
            parse_user_options("user,hostfwd=tcp::2222-:22").expect("parses")[0].host,
            "127.0.0.1:2222".parse().expect("addr")
        );
        assert_eq!(parse_user_options("user").expect("parses"), vec![]);
        for bad in [
            "tap",
            "user,hostfwd=udp::1-:2",
            "user,hostfwd=tcp::x-:2",
            "user,foo",
        ] {
            assert!(parse_user_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tap_options() {
        assert_eq!(
            parse_net("tap,ifname=tap0").expect("parses"),
            NetSpec {
                kind: NetKind::Tap("tap0".into()),
                mtu: ETHERNET_MTU
            }
        );
        assert_eq!(
            parse_net("tap,ifname=tap0,mtu=9000").expect("parses").mtu,
            9000
        );
        for bad in [
            "tap",
            "tap,ifname=",
            "tapx",
            "bridge",
            "tap,ifname=t,mtu=67",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn switch_options() {
        let switch = NetSpec {
            kind: NetKind::Switch("127.0.0.1:7000".parse().expect("an address")),
            mtu: LINK_MTU,
        };
        assert_eq!(parse_net("switch:127.0.0.1:7000").expect("parses"), switch);
        assert_eq!(
            parse_net("switch:127.0.0.1:7000,mtu=1500").expect("parses"),
            NetSpec {
                mtu: 1500,
                ..switch
            }
        );
        for bad in [
            "switch:",
            "switch:127.0.0.1",
            "switch:nowhere:x",
            "switch:127.0.0.1:7000,mtu=65281",
            "switch:127.0.0.1:7000,mtu=x",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let user = parse_net("user,mtu=1500,hostfwd=tcp::2222-:22").expect("parses");
        assert_eq!(user.mtu, 1500);
        assert!(matches!(&user.kind, NetKind::User(forwards) if forwards.len() == 1));
        assert_eq!(parse_net("user").expect("parses").mtu, LINK_MTU);
        assert!(
            matches!(attach(&user, None), Err(NetError::Option(..))),
            "a pair's VM may not carry its own gateway"
        );
    }

    /// An Ethernet frame with a 20-byte IPv4 header and a 20-byte TCP
    /// header, all other fields zero.
    fn tcp_frame() -> Vec<u8> {
        let mut frame = vec![0u8; 54];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[23] = 6;
        frame[34 + 12] = 5 << 4;
        frame
    }

    #[test]
    fn syn_detection() {
        let mut frame = tcp_frame();
        frame[30..34].copy_from_slice(&GATEWAY_IP.octets());
        frame[34 + 2..34 + 4].copy_from_slice(&8000u16.to_be_bytes());
        frame[34 + 13] = 0x02;
        assert_eq!(syn_to_gateway_port(&frame), Some(8000));
        frame[34 + 13] = 0x12; // SYN+ACK
        assert_eq!(syn_to_gateway_port(&frame), None);
        assert_eq!(syn_to_gateway_port(&frame[..20]), None);
    }

    /// A guest TCP/IP stack (smoltcp again) wired to a `UserNet`, so a
    /// forwarded port is checked end to end without a VM. Its `Frames`
    /// are seen from the guest's side: `to_gateway` holds what the guest
    /// receives, `to_guest` what it sends.
    struct StackGuest {
        iface: Interface,
        frames: Frames,
        sockets: SocketSet<'static>,
        start: std::time::Instant,
    }

    impl StackGuest {
        fn new() -> StackGuest {
            let mut frames = Frames::default();
            let mac = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
            let mut iface = Interface::new(
                Config::new(HardwareAddress::Ethernet(mac)),
                &mut frames,
                Instant::from_millis(0),
            );
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24));
            });
            StackGuest {
                iface,
                frames,
                sockets: SocketSet::new(Vec::new()),
                start: std::time::Instant::now(),
            }
        }

        fn listen(&mut self, port: u16) -> SocketHandle {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            socket.listen(port).expect("listen");
            self.sockets.add(socket)
        }

        /// One round trip of frames between the guest and the gateway.
        fn exchange(&mut self, net: &mut UserNet) {
            let now = Instant::from_micros(self.start.elapsed().as_micros() as i64);
            self.iface.poll(now, &mut self.frames, &mut self.sockets);
            for frame in self.frames.to_guest.drain(..) {
                net.send(&frame);
            }
            self.frames.to_gateway.extend(net.poll());
            self.iface.poll(now, &mut self.frames, &mut self.sockets);
        }
    }

    fn forwarded(guest_port: u16) -> (UserNet, TcpStream) {
        let net = UserNet::new(&[HostForward {
            host: "127.0.0.1:0".parse().expect("addr"),
            guest_port,
        }])
        .expect("a user network");
        let addr = net.forwards[0].0.local_addr().expect("bound");
        let client = TcpStream::connect(addr).expect("the kernel takes the connection");
        client.set_nonblocking(true).expect("nonblocking");
        (net, client)
    }

    /// Runs the guest until the host client reads an end or an error;
    /// what it read before that, and how it ended.
    fn read_to_end(
        guest: &mut StackGuest,
        net: &mut UserNet,
        client: &mut TcpStream,
        mut serve: impl FnMut(&mut StackGuest),
    ) -> (Vec<u8>, std::io::Result<()>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        // A bound on a hang, not a timing claim: a round takes microseconds.
        for _ in 0..20_000 {
            guest.exchange(net);
            serve(guest);
            match client.read(&mut buf) {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => return (got, Err(e)),
            }
        }
        panic!("the relay never ended; read {got:?}");
    }

    #[test]
    fn a_forwarded_connection_carries_the_guests_answer_and_its_close() {
        let (mut net, mut client) = forwarded(80);
        let mut guest = StackGuest::new();
        let server = guest.listen(80);
        client.write_all(b"ping").expect("send");
        let (answer, end) = read_to_end(&mut guest, &mut net, &mut client, |guest| {
            let socket = guest.sockets.get_mut::<tcp::Socket>(server);
            if socket.can_recv() {
                let mut request = [0u8; 4];
                if socket.recv_slice(&mut request) == Ok(4) {
                    assert_eq!(&request, b"ping");
                    socket.send_slice(b"pong").expect("queue the answer");
                    socket.close();
                }
            }
        });
        assert_eq!(answer, b"pong");
        end.expect("a clean end after the answer");
    }

    #[test]
    fn a_guest_port_nobody_listens_on_resets_the_host_client() {
        let (mut net, mut client) = forwarded(81);
        let mut guest = StackGuest::new();
        let (read, end) = read_to_end(&mut guest, &mut net, &mut client, |_| {});
        assert_eq!(read, b"");
        let error = end.expect_err("the guest refused: the client must not see a clean end");
        assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    }

    /// A host client connected through a forwarded port to a guest that
    /// listens on `guest_port`, the handshake done and its last frames
    /// delivered; from here on the gateway's frames need not reach the
    /// guest. Also the guest and its connected socket.
    fn established(guest_port: u16) -> (UserNet, TcpStream, StackGuest, SocketHandle) {
        let (mut net, client) = forwarded(guest_port);
        let mut guest = StackGuest::new();
        let server = guest.listen(guest_port);
        for _ in 0..1000 {
            guest.exchange(&mut net);
            if guest.sockets.get::<tcp::Socket>(server).state() == tcp::State::Established {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(
            guest.sockets.get::<tcp::Socket>(server).state(),
            tcp::State::Established
        );
        // Let the gateway's last handshake frames reach the guest.
        guest.exchange(&mut net);
        (net, client, guest, server)
    }

    /// TCP payload bytes in frames the gateway sent the guest.
    fn payload_to_guest(frames: &[Vec<u8>]) -> usize {
        frames
            .iter()
            .filter_map(|frame| tcp_payload_len(ipv4_tcp(frame)?.1))
            .sum()
    }

    /// The host's client already decided how to cut its bytes into
    /// writes; the relay must not hold back a message's last, short
    /// segment until the guest acknowledges the ones before it (Nagle's
    /// algorithm), because the guest delays that acknowledgement (Linux:
    /// 40 ms), and every message longer than a segment would stall.
    #[test]
    fn a_message_longer_than_a_segment_reaches_the_guest_before_any_ack() {
        let (mut net, mut client, ..) = established(82);
        let message = vec![b'm'; 3000];
        client.write_all(&message).expect("send");
        // The gateway's frames are collected, never delivered: no ACK comes.
        let mut sent = 0;
        for _ in 0..1000 {
            sent += payload_to_guest(&net.poll());
            if sent >= message.len() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(sent, message.len(), "bytes sent before the guest's ACK");
    }

    /// smoltcp sends one segment per socket per poll of its interface: a
    /// message of several segments must still leave in one poll of the
    /// gateway, not one segment per turn of the loop that polls it (in the
    /// pair's switch the next turn came with the guest's acknowledgement,
    /// 0.6 ms later).
    #[test]
    fn a_message_of_several_segments_leaves_in_one_poll() {
        let (mut net, mut client, ..) = established(83);
        let message = vec![b'm'; 3000];
        client.write_all(&message).expect("send");
        // The first poll that finds the bytes must send all of them.
        for _ in 0..1000 {
            let sent = payload_to_guest(&net.poll());
            if sent > 0 {
                assert_eq!(
                    sent,
                    message.len(),
                    "bytes sent by the poll that found them"
                );
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        panic!("the message never left");
    }

    /// A guest that streams to a client which hung up is reset, as a host's
    /// stack would do when bytes arrive for a closed socket; the gateway
    /// used to acknowledge and drop them, and a guest's `cat /dev/zero`
    /// behind a forwarded port ran on after each client, every new
    /// transfer sharing the link with all the old ones.
    #[test]
    fn a_guest_streaming_to_a_closed_client_is_reset() {
        let (mut net, client, mut guest, server) = established(84);
        drop(client);
        let chunk = [b'z'; 1024];
        for _ in 0..2000 {
            let socket = guest.sockets.get_mut::<tcp::Socket>(server);
            if socket.state() == tcp::State::Closed {
                return;
            }
            if socket.can_send() {
                let _ = socket.send_slice(&chunk);
            }
            guest.exchange(&mut net);
            std::thread::sleep(Duration::from_micros(200));
        }
        panic!(
            "the guest still sends, in state {}",
            guest.sockets.get::<tcp::Socket>(server).state()
        );
    }

    /// The other half of the same stall: the relay writes each guest
    /// segment to the host as it comes, and a host socket with Nagle's
    /// algorithm held the short last one until the client's delayed ACK.
    #[test]
    fn relayed_host_sockets_send_without_delay() {
        let (mut net, _client) = forwarded(83);
        for _ in 0..1000 {
            net.poll();
            if !net.relays.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let host = net.relays.first().and_then(|relay| relay.host.as_ref());
        let host = host.expect("the forwarded connection is accepted");
        assert!(host.nodelay().expect("TCP_NODELAY readable"));
    }

    /// A loop that sleeps between polls is woken by a client's
    /// connection and by its bytes, instead of finding them at its next
    /// periodic poll.
    #[test]
    fn host_input_wakes_the_polling_loop() {
        const INPUT: mio::Token = mio::Token(7);
        let mut poll = mio::Poll::new().expect("an epoll");
        let mut events = mio::Events::with_capacity(8);
        let mut net = UserNet::new(&[HostForward {
            host: "127.0.0.1:0".parse().expect("addr"),
            guest_port: 84,
        }])
        .expect("a user network");
        net.watch_input(poll.registry(), INPUT)
            .expect("watching the host sockets");
        let addr = net.forwards[0].0.local_addr().expect("bound");
        // A bound on a hang, not a timing claim.
        let limit = Some(Duration::from_secs(10));
        let mut woken = |poll: &mut mio::Poll| {
            poll.poll(&mut events, limit).expect("epoll");
            events.iter().any(|event| event.token() == INPUT)
        };
        let mut client = TcpStream::connect(addr).expect("the kernel takes the connection");
        assert!(woken(&mut poll), "woken by the connection");
        net.poll();
        assert_eq!(net.relays.len(), 1, "the poll accepted the connection");
        client.write_all(b"hello").expect("send");
        assert!(woken(&mut poll), "woken by the client's bytes");
    }

    #[test]
    fn trace_summaries_survive_malformed_frames() {
        let mut frame = tcp_frame();
        frame[34 + 13] = 0x12;
        assert_eq!(summary(&frame), "tcp 0 -> 0 flags 0x12 payload 0");
        frame[14] = 0x4f; // an IP header longer than the frame
        assert_eq!(summary(&frame), "ipv4");
        assert_eq!(summary(&frame[..20]), "ipv4");
        assert_eq!(summary(&frame[..5]), "other");
    }
}
