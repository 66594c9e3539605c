//! Flow events (Hubble's flows, issue 7): what the workers saw worth telling, pushed into a
//! per-worker lock-free ring that the control plane drains, enriches (pods, labels, policy
//! names, services) and stores. Events are fixed-size `Copy` values: pushing one allocates
//! nothing and takes no lock; a full ring loses the event and counts it.
//!
//! Emitted: every drop, every new connection (with the policy that allowed it, or the service
//! it was translated for), every FIN or RST of a tracked connection, every HTTP request judged
//! on an L7-inspected connection. Packets of established flows are not emitted one by one: the
//! counters aggregate them.
//!
//! An event is kept small (the push copies it): HTTP requests, with their method, path and
//! host, go through a second queue of their own.

use crossbeam_queue::ArrayQueue;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Events a worker's ring holds before the collector drains it (every 20 ms): 16,384 x ~100
/// bytes = 1.6 MiB per worker, room for ~800k events/s per worker between two drains.
pub const RING: usize = 16_384;
/// HTTP events a worker's ring holds (each ~320 bytes): a quarter of the others.
pub const HTTP_RING: usize = RING / 4;

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A packet was dropped (`drop_reason`).
    Drop,
    /// A new connection allowed by policy (`policy_slot`: the allowing policy, or none).
    New,
    /// A new connection to a service, translated to a backend.
    Translated,
    /// A connection's first FIN or RST.
    End,
    /// An HTTP request on an L7-inspected connection (`l7`).
    Http,
}

/// An HTTP request as an event carries it: method and URL truncated to fixed arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpEvent {
    pub method: [u8; 12],
    pub method_len: u8,
    pub path: [u8; 128],
    pub path_len: u8,
    pub host: [u8; 64],
    pub host_len: u8,
    /// The status sluice answered (403), or 0 when the request went on to the server.
    pub code: u16,
}

impl HttpEvent {
    fn put<const N: usize>(dst: &mut [u8; N], src: &[u8]) -> u8 {
        let n = src.len().min(N).min(255);
        dst[..n].copy_from_slice(&src[..n]);
        n as u8
    }

    pub fn new(method: &[u8], path: &[u8], host: &[u8], code: u16) -> HttpEvent {
        let mut e = HttpEvent {
            method: [0; 12],
            method_len: 0,
            path: [0; 128],
            path_len: 0,
            host: [0; 64],
            host_len: 0,
            code,
        };
        e.method_len = Self::put(&mut e.method, method);
        e.path_len = Self::put(&mut e.path, path);
        e.host_len = Self::put(&mut e.host, host);
        e
    }

    pub fn method(&self) -> &[u8] {
        &self.method[..usize::from(self.method_len)]
    }
    pub fn path(&self) -> &[u8] {
        &self.path[..usize::from(self.path_len)]
    }
    pub fn host(&self) -> &[u8] {
        &self.host[..usize::from(self.host_len)]
    }
}

/// One flow event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// Wall-clock time, ns since the Unix epoch (taken once per batch).
    pub time_ns: u64,
    pub kind: EventKind,
    /// The drop reason's code (0: not a drop).
    pub drop_reason: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// The packet travels against its connection's direction.
    pub is_reply: bool,
    /// Interface (config order) the packet was received on.
    pub port: u16,
    /// Drop counter slot of the policy that decided (u16::MAX: none).
    pub policy_slot: u16,
    /// Sender's identity when the packet carried it (tunnel VNI); 0: from the ipcache.
    pub src_identity: u32,
    /// Service traffic: the frontend the client addressed, and the backend it was sent to.
    pub frontend: Option<(IpAddr, u16)>,
    pub backend: Option<(IpAddr, u16)>,
}

impl FlowEvent {
    /// An event of `kind` with everything else empty.
    pub fn new(kind: EventKind) -> FlowEvent {
        FlowEvent {
            time_ns: 0,
            kind,
            drop_reason: 0,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            is_reply: false,
            port: 0,
            policy_slot: u16::MAX,
            src_identity: 0,
            frontend: None,
            backend: None,
        }
    }

    /// Addresses, ports, protocol and flags from a parsed packet.
    pub fn of_packet(kind: EventKind, p: &crate::wire::parse::Parsed) -> FlowEvent {
        FlowEvent {
            src: p.src,
            dst: p.dst,
            sport: p.src_port,
            dport: p.dst_port,
            proto: p.protocol,
            tcp_flags: p.tcp_flags,
            ..FlowEvent::new(kind)
        }
    }
}

/// A drained event: the flow, and the request if it is an HTTP event.
pub type Drained = (FlowEvent, Option<HttpEvent>);

/// One worker's rings, shared with the collector.
pub struct FlowRing {
    queue: ArrayQueue<FlowEvent>,
    http: ArrayQueue<(FlowEvent, HttpEvent)>,
    /// Events lost to a full ring.
    pub lost: AtomicU64,
    /// Events pushed (published by the worker once per batch).
    pub emitted: AtomicU64,
}

impl FlowRing {
    pub fn new(capacity: usize) -> FlowRing {
        FlowRing {
            queue: ArrayQueue::new(capacity.max(1)),
            http: ArrayQueue::new((capacity / 4).max(1)),
            lost: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
        }
    }

    /// Takes up to `max` events of each queue into `out`, in time order.
    pub fn drain_into(&self, out: &mut Vec<Drained>, max: usize) -> usize {
        let start = out.len();
        while out.len() - start < max {
            let Some(e) = self.queue.pop() else { break };
            out.push((e, None));
        }
        let plain = out.len();
        while out.len() - plain < max {
            let Some((e, h)) = self.http.pop() else { break };
            out.push((e, Some(h)));
        }
        if out.len() > plain && plain > start {
            // both queues are each in time order: one stable sort merges them
            out[start..].sort_by_key(|(e, _)| e.time_ns);
        }
        out.len() - start
    }
}

/// Whether flow events are produced at all (the `[observe] flows` setting): off, the workers
/// skip every emission with one relaxed load per batch.
pub static ENABLED: AtomicBool = AtomicBool::new(true);

/// A worker's end: the rings, the batch's timestamp, and its own count of what it pushed
/// (published once per batch: no shared atomic per event).
#[derive(Default)]
pub struct EventSink {
    ring: Option<std::sync::Arc<FlowRing>>,
    now_ns: u64,
    on: bool,
    pushed: std::cell::Cell<u64>,
    lost: std::cell::Cell<u64>,
}

impl EventSink {
    pub fn new(ring: std::sync::Arc<FlowRing>) -> EventSink {
        EventSink {
            ring: Some(ring),
            ..Default::default()
        }
    }

    /// Once per batch: whether events are wanted, and the time they carry; publishes the
    /// counts of the batch before.
    #[inline]
    pub fn start_batch(&mut self) {
        let Some(r) = &self.ring else { return };
        r.emitted.store(self.pushed.get(), Ordering::Relaxed);
        r.lost.store(self.lost.get(), Ordering::Relaxed);
        self.on = ENABLED.load(Ordering::Relaxed);
        if self.on {
            self.now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        }
    }

    /// Whether events are produced for this batch.
    #[inline]
    pub fn on(&self) -> bool {
        self.on
    }

    #[inline]
    fn count(&self, ok: bool) {
        let c = if ok { &self.pushed } else { &self.lost };
        c.set(c.get() + 1);
    }

    /// Pushes an event (stamped with the batch's time); counted as lost when the ring is full.
    #[inline]
    pub fn emit(&self, mut e: FlowEvent) {
        let Some(r) = self.ring.as_ref().filter(|_| self.on) else {
            return;
        };
        e.time_ns = self.now_ns;
        self.count(r.queue.push(e).is_ok());
    }

    /// Pushes an HTTP request event.
    #[inline]
    pub fn emit_http(&self, mut e: FlowEvent, h: HttpEvent) {
        let Some(r) = self.ring.as_ref().filter(|_| self.on) else {
            return;
        };
        e.time_ns = self.now_ns;
        self.count(r.http.push((e, h)).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_ring_loses_and_counts_and_nothing_flows_while_off() {
        let ring = Arc::new(FlowRing::new(4));
        let mut sink = EventSink::new(ring.clone());
        sink.emit(FlowEvent::new(EventKind::Drop));
        sink.start_batch();
        assert_eq!(
            ring.emitted.load(Ordering::Relaxed),
            0,
            "before a batch: off"
        );
        for _ in 0..5 {
            sink.emit(FlowEvent::new(EventKind::Drop));
        }
        let h = HttpEvent::new(b"POST", &[b'a'; 300], b"x", 403);
        sink.emit_http(FlowEvent::new(EventKind::Http), h);
        sink.emit_http(FlowEvent::new(EventKind::Http), h);
        sink.start_batch();
        assert_eq!(ring.emitted.load(Ordering::Relaxed), 5);
        assert_eq!(ring.lost.load(Ordering::Relaxed), 2, "4 + 1 fit");
        let mut out = Vec::new();
        assert_eq!(ring.drain_into(&mut out, 10), 5);
        assert!(out[0].0.time_ns > 0);
        assert_eq!(out.iter().filter(|(_, h)| h.is_some()).count(), 1);
        assert_eq!(
            (h.method(), h.path().len(), h.code),
            (&b"POST"[..], 128, 403)
        );
        // the push copies it: keep it small
        assert!(
            std::mem::size_of::<FlowEvent>() <= 128,
            "{}",
            std::mem::size_of::<FlowEvent>()
        );
    }
}
