//! A packet delayer on NFQUEUE (the kernel here has no netem): packets an iptables rule
//! sends to the queue are held for a random `min..=max` ms, then accepted. Releases stay
//! in arrival order (a packet never leaves before one queued earlier), as on a real
//! link whose latency varies, so TCP sees delay and jitter but no reordering.
//!
//! Speaks nfnetlink directly over a raw netlink socket (`libc`), so it needs no library
//! and no Python: bind the queue, copy metadata only, and answer each packet id with a
//! verdict when its time comes. Run it inside the namespace that holds the rule.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use rand::Rng;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NF_ACCEPT: u32 = 1;

/// One netlink attribute, padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len() + 3);
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// One nfnetlink queue message: netlink header, nfgenmsg, attributes.
fn message(kind: u16, queue: u16, attrs: &[Vec<u8>], flags: u16, seq: u32) -> Vec<u8> {
    let body_len: usize = 4 + attrs.iter().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(16 + body_len);
    out.extend_from_slice(&((16 + body_len) as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(libc::AF_UNSPEC as u8);
    out.push(0);
    out.extend_from_slice(&queue.to_be_bytes());
    for a in attrs {
        out.extend_from_slice(a);
    }
    out
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this struct owns.
        unsafe {
            libc::close(self.0);
        }
    }
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket syscalls on a fresh descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let socket = Socket(fd);
            let size: libc::c_int = 4 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer outlives the call.
        let sent = unsafe { libc::send(self.0, bytes.as_ptr() as *const _, bytes.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever if `None`) for data; the bytes read, if any.
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        let mut poll = libc::pollfd {
            fd: self.0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one pollfd we own.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        if ready == 0 {
            return Ok(0);
        }
        // SAFETY: reading into a buffer we own, bounded by its length.
        let read = unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if read < 0 {
            let err = io::Error::last_os_error();
            // ENOBUFS: the kernel dropped messages (those packets pass, thanks to
            // --queue-bypass only when no reader is bound; otherwise they are lost).
            if err.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(read as usize)
    }
}

/// What one received buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    packets: Vec<u32>,
    errors: Vec<i32>,
}

/// Splits a buffer into netlink messages: queued packet ids and error/ack codes.
fn parse(data: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut off = 0;
    while off + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap_or_default());
        if len < 16 || off + len > data.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            parsed.errors.push(i32::from_ne_bytes(
                data[off + 16..off + 20].try_into().unwrap_or_default(),
            ));
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut p = off + 20;
            while p + 4 <= off + len {
                let alen =
                    u16::from_ne_bytes(data[p..p + 2].try_into().unwrap_or_default()) as usize;
                let atype = u16::from_ne_bytes(data[p + 2..p + 4].try_into().unwrap_or_default());
                if alen < 4 {
                    break;
                }
                if atype & 0x3fff == NFQA_PACKET_HDR && p + 8 <= data.len() {
                    parsed.packets.push(u32::from_be_bytes(
                        data[p + 4..p + 8].try_into().unwrap_or_default(),
                    ));
                }
                p += (alen + 3) & !3;
            }
        }
        off += (len + 3) & !3;
    }
    parsed
}

/// Binds `queue` and delays every packet by a random `min_ms..=max_ms`, forever.
/// Prints `nfq-delay ready` once the queue is bound.
pub fn run(queue: u16, min_ms: u32, max_ms: u32) -> io::Result<()> {
    let socket = Socket::open()?;
    let mut cmd = vec![NFQNL_CFG_CMD_BIND, 0];
    cmd.extend_from_slice(&0u16.to_be_bytes());
    socket.send(&message(
        NFQNL_MSG_CONFIG,
        queue,
        &[attr(NFQA_CFG_CMD, &cmd)],
        NLM_F_REQUEST | NLM_F_ACK,
        1,
    ))?;
    let mut params = 0u32.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_META);
    socket.send(&message(
        NFQNL_MSG_CONFIG,
        queue,
        &[attr(NFQA_CFG_PARAMS, &params)],
        NLM_F_REQUEST | NLM_F_ACK,
        2,
    ))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while acks < 2 {
        if Instant::now() > deadline {
            return Err(io::Error::other("no answer from nfnetlink"));
        }
        let n = socket.recv(&mut buf, Some(Duration::from_millis(500)))?;
        for err in parse(&buf[..n]).errors {
            if err != 0 {
                return Err(io::Error::from_raw_os_error(-err));
            }
            acks += 1;
        }
    }
    println!("nfq-delay ready queue={queue} delay={min_ms}..={max_ms}ms");

    let mut rng = rand::rng();
    let mut pending: VecDeque<(Instant, u32)> = VecDeque::new();
    loop {
        let timeout = pending
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()));
        let n = socket.recv(&mut buf, timeout)?;
        let now = Instant::now();
        for id in parse(&buf[..n]).packets {
            let delay = Duration::from_millis(u64::from(rng.random_range(min_ms..=max_ms)));
            let due = pending
                .back()
                .map_or(now + delay, |(last, _)| (*last).max(now + delay));
            pending.push_back((due, id));
        }
        while pending.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, id)) = pending.pop_front() else {
                break;
            };
            let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
            verdict.extend_from_slice(&id.to_be_bytes());
            socket.send(&message(
                NFQNL_MSG_VERDICT,
                queue,
                &[attr(NFQA_VERDICT_HDR, &verdict)],
                NLM_F_REQUEST,
                0,
            ))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_message_yields_its_id_and_an_error_message_its_code() {
        // A queued-packet message with one NFQA_PACKET_HDR attribute (id 0x01020304).
        let mut hdr = 0x0102_0304u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 1]);
        let packet = message(NFQNL_MSG_PACKET, 0, &[attr(NFQA_PACKET_HDR, &hdr)], 0, 0);
        let mut error = Vec::new();
        error.extend_from_slice(&20u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-1i32).to_ne_bytes());
        let mut both = packet;
        both.extend_from_slice(&error);
        let parsed = parse(&both);
        assert_eq!(parsed.packets, vec![0x0102_0304]);
        assert_eq!(parsed.errors, vec![-1]);
    }
}
