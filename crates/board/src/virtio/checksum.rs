//! A network card's checksum offloads (virtio-net `CSUM` and
//! `GUEST_CSUM`): the card finishes the TCP or UDP checksum of a frame the
//! guest sent with only the pseudo-header's sum in it, and checks the
//! checksum of a frame it receives, so that the guest's kernel, emulated,
//! does neither pass over the bytes. Both are functions of the frame
//! alone, so a replaying backup computes the same.

/// The ones' complement sum of `data` as big-endian 16-bit words (a last
/// odd byte padded with zero), not yet folded to 16 bits.
fn sum(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut total: u64 = words
        .by_ref()
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    total += pairs
        .by_ref()
        .map(|p| u64::from(u16::from_be_bytes([p[0], p[1]])))
        .sum::<u64>();
    if let [last] = pairs.remainder() {
        total += u64::from(*last) << 8;
    }
    total
}

fn fold(mut total: u64) -> u16 {
    while total >> 16 != 0 {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u16
}

/// Finish a checksum the guest left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`):
/// the field at `start + offset` holds the pseudo-header's sum, and the
/// checksum covers everything from `start` to the end of the frame.
/// `None` if the field is not inside the frame.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> Option<()> {
    let field = start.checked_add(offset)?;
    if field.checked_add(2)? > frame.len() {
        return None;
    }
    let checksum = !fold(sum(&frame[start..]));
    frame[field..field + 2].copy_from_slice(&checksum.to_be_bytes());
    Some(())
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(super) const TCP: u8 = 6;
const UDP: u8 = 17;

/// Whether `frame` is an IPv4 or IPv6 TCP or UDP packet whose checksum is
/// right (what `VIRTIO_NET_HDR_F_DATA_VALID` tells the guest). Anything
/// else (other protocols, fragments, IPv6 extension headers, a UDP
/// datagram sent without a checksum, a wrong checksum) is `false`: the
/// guest checks for itself, as with a card without the offload.
pub fn verified(frame: &[u8]) -> bool {
    let Some(&[t0, t1]) = frame.get(12..14) else {
        return false;
    };
    let packet = &frame[14..];
    match u16::from_be_bytes([t0, t1]) {
        ETHERTYPE_IPV4 => ipv4(packet),
        ETHERTYPE_IPV6 => ipv6(packet),
        _ => false,
    }
}

fn ipv4(packet: &[u8]) -> bool {
    let Some(header) = packet.get(..20) else {
        return false;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff;
    if header[0] >> 4 != 4 || header_len < 20 || total < header_len || total > packet.len() {
        return false;
    }
    if fragment != 0 {
        return false;
    }
    let protocol = header[9];
    let segment = &packet[header_len..total];
    let pseudo = sum(&header[12..20]) + u64::from(protocol) + segment.len() as u64;
    transport(protocol, segment, pseudo)
}

fn ipv6(packet: &[u8]) -> bool {
    let Some(header) = packet.get(..40) else {
        return false;
    };
    let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if header[0] >> 4 != 6 || 40 + payload > packet.len() {
        return false;
    }
    let protocol = header[6];
    let segment = &packet[40..40 + payload];
    let pseudo = sum(&header[8..40]) + u64::from(protocol) + segment.len() as u64;
    transport(protocol, segment, pseudo)
}

fn transport(protocol: u8, segment: &[u8], pseudo: u64) -> bool {
    let field = match protocol {
        TCP => 16,
        UDP => 6,
        _ => return false,
    };
    let Some(&[c0, c1]) = segment.get(field..field + 2) else {
        return false;
    };
    // A UDP checksum of zero means "none": nothing to vouch for.
    if protocol == UDP && [c0, c1] == [0, 0] {
        return false;
    }
    fold(pseudo + sum(segment)) == 0xffff
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 as written: 16-bit words, end-around carry at each step.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for chunk in data.chunks(2) {
            let word = u32::from(chunk[0]) << 8 | u32::from(*chunk.get(1).unwrap_or(&0));
            acc += word;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// An Ethernet frame with an IPv4 TCP or UDP packet carrying `payload`,
    /// its checksum left as the pseudo-header's sum (as a guest with the
    /// offload leaves it), and where the checksum starts and lies.
    pub(in crate::virtio) fn partial_ipv4(protocol: u8, payload: &[u8]) -> (Vec<u8>, usize, usize) {
        let l4_header = if protocol == TCP { 20 } else { 8 };
        let l4_len = l4_header + payload.len();
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
        frame.extend_from_slice(&ip);
        let mut l4 = vec![0u8; l4_header];
        l4[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x07]);
        if protocol == UDP {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        frame.extend_from_slice(&l4);
        frame.extend_from_slice(payload);
        let offset = if protocol == TCP { 16 } else { 6 };
        let pseudo = fold(sum(&ip[12..20]) + u64::from(protocol) + l4_len as u64);
        let field = 34 + offset;
        frame[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        (frame, 34, offset)
    }

    #[test]
    fn a_partial_checksum_is_completed_and_then_verifies() {
        for protocol in [TCP, UDP] {
            let (mut frame, start, offset) = partial_ipv4(protocol, b"hello, world!");
            assert!(!verified(&frame), "a partial checksum is not a right one");
            complete(&mut frame, start, offset).expect("field inside the frame");
            assert!(verified(&frame));
            // The whole segment with its pseudo-header sums to zero.
            let l4 = frame[start..].to_vec();
            let mut with_pseudo = frame[26..34].to_vec();
            with_pseudo.extend_from_slice(&[0, protocol]);
            with_pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            with_pseudo.extend_from_slice(&l4);
            assert_eq!(reference(&with_pseudo), 0);
        }
    }

    #[test]
    fn what_cannot_be_vouched_for_is_not_marked() {
        let (mut frame, start, offset) = partial_ipv4(TCP, &[7; 100]);
        complete(&mut frame, start, offset).expect("inside");
        let mut fragment = frame.clone();
        fragment[20] |= 0x20; // more fragments
        assert!(!verified(&fragment));
        let mut truncated = frame.clone();
        truncated.truncate(frame.len() - 1);
        assert!(!verified(&truncated));
        let mut other = frame.clone();
        other[23] = 1; // ICMP
        assert!(!verified(&other));
        let (mut udp, start, offset) = partial_ipv4(UDP, &[1, 2, 3]);
        complete(&mut udp, start, offset).expect("inside");
        udp[40..42].copy_from_slice(&[0, 0]);
        assert!(!verified(&udp), "a UDP datagram without a checksum");
        assert!(complete(&mut frame.clone(), frame.len() - 1, 0).is_none());
        assert!(complete(&mut frame, usize::MAX, 2).is_none());
    }

    proptest! {
        #[test]
        fn sums_agree_with_rfc_1071(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(!fold(sum(&data)), reference(&data));
        }

        #[test]
        fn any_one_byte_changed_fails(
            payload in proptest::collection::vec(any::<u8>(), 1..1500),
            tcp: bool,
            at: prop::sample::Index,
            flip in 1u8..=255,
        ) {
            let protocol = if tcp { TCP } else { UDP };
            let (mut frame, start, offset) = partial_ipv4(protocol, &payload);
            complete(&mut frame, start, offset).expect("inside");
            prop_assert!(verified(&frame));
            let i = start + offset + 2 + at.index(frame.len() - start - offset - 2);
            frame[i] ^= flip;
            prop_assert!(!verified(&frame));
        }
    }
}
