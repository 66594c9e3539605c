//! Hand-off between workers, as VPP's handoff nodes: conntrack is per worker, so a packet that
//! belongs to another worker's connection (a reply that the NIC, or the veth, delivered on
//! another queue than the connection's) is copied to that worker, which runs it through its own
//! pipeline as if it had received it.
//!
//! One pair of lock-free queues per (sender, receiver): `data` carries filled buffers, `free`
//! brings them back. All buffers are allocated up front; the fast path only moves boxes between
//! queues and copies bytes. A receiver asleep on its sockets is woken by the sender.

use crate::io::PacketIo;
use crate::packet::{Batch, Port};
use crate::state::Wake;
use crate::stats::WorkerStats;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Buffers per (sender, receiver) pair: a few batches in flight. A full queue drops the packet
/// with HANDOFF_QUEUE_FULL (the receiver is overloaded).
pub const DEPTH: usize = 256;

struct Slot {
    buf: Box<[u8]>,
    len: usize,
    port: Port,
    /// Hand-offs so far, this one included (`Meta::hops`).
    hops: u8,
}

struct Pair {
    data: ArrayQueue<Slot>,
    free: ArrayQueue<Box<[u8]>>,
}

struct Receiver {
    /// Set while the worker sleeps on its sockets (adaptive poll mode).
    sleeping: AtomicBool,
    waker: OnceLock<Arc<dyn Wake>>,
}

/// The hand-off queues of all workers.
pub struct Handoff {
    workers: usize,
    /// Index `from * workers + to`.
    pairs: Vec<Pair>,
    receivers: Vec<Receiver>,
}

impl Handoff {
    /// Queues between `workers` workers for frames of up to `frame_size` bytes.
    pub fn new(workers: usize, frame_size: usize) -> Arc<Handoff> {
        let pairs = (0..workers * workers)
            .map(|_| {
                let free = ArrayQueue::new(DEPTH);
                for _ in 0..DEPTH {
                    let _ = free.push(vec![0u8; frame_size].into_boxed_slice());
                }
                Pair {
                    data: ArrayQueue::new(DEPTH),
                    free,
                }
            })
            .collect();
        let receivers = (0..workers)
            .map(|_| Receiver {
                sleeping: AtomicBool::new(false),
                waker: OnceLock::new(),
            })
            .collect();
        Arc::new(Handoff {
            workers,
            pairs,
            receivers,
        })
    }

    /// How worker `worker` is woken from its idle sleep (the first registration stays).
    pub fn set_waker(&self, worker: usize, w: Arc<dyn Wake>) {
        if let Some(r) = self.receivers.get(worker) {
            let _ = r.waker.set(w);
        }
    }

    /// Worker `me`'s end.
    pub fn port(self: &Arc<Self>, me: usize) -> HandoffPort {
        HandoffPort {
            shared: self.clone(),
            me,
        }
    }

    fn pair(&self, from: usize, to: usize) -> &Pair {
        &self.pairs[from * self.workers + to]
    }
}

/// One worker's end of the hand-off.
pub struct HandoffPort {
    shared: Arc<Handoff>,
    me: usize,
}

impl HandoffPort {
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Copies a frame to worker `to`, handed over `hops` times before; false when its queue is
    /// full or the frame too big.
    #[inline]
    pub fn send(&self, to: usize, bytes: &[u8], port: Port, hops: u8) -> bool {
        if to >= self.shared.workers || to == self.me {
            return false;
        }
        let pair = self.shared.pair(self.me, to);
        let Some(mut buf) = pair.free.pop() else {
            return false;
        };
        if bytes.len() > buf.len() {
            let _ = pair.free.push(buf);
            return false;
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        // cannot fail: a buffer comes from `free`, and at most DEPTH exist per pair
        let _ = pair.data.push(Slot {
            buf,
            len: bytes.len(),
            port,
            hops: hops.saturating_add(1),
        });
        true
    }

    /// Wakes worker `to` if it sleeps (after `send`s to it).
    pub fn wake(&self, to: usize) {
        if let Some(r) = self.shared.receivers.get(to) {
            // SeqCst pairs with `sleep`: either the receiver sees the data before sleeping, or
            // the sender sees it asleep and wakes it.
            if r.sleeping.load(Ordering::SeqCst) {
                if let Some(w) = r.waker.get() {
                    w.wake();
                }
            }
        }
    }

    /// Whether frames wait for this worker.
    pub fn pending(&self) -> bool {
        (0..self.shared.workers).any(|from| !self.shared.pair(from, self.me).data.is_empty())
    }

    /// Marks this worker asleep; returns false (stay awake) if frames wait for it.
    pub fn sleep(&self) -> bool {
        self.shared.receivers[self.me]
            .sleeping
            .store(true, Ordering::SeqCst);
        if self.pending() {
            self.awake();
            return false;
        }
        true
    }

    pub fn awake(&self) {
        self.shared.receivers[self.me]
            .sleeping
            .store(false, Ordering::SeqCst);
    }

    /// Moves frames handed to this worker into `batch` (copied into `io`'s own buffers) while
    /// the batch has room and `io` has free buffers. Returns how many.
    pub fn receive(&self, io: &mut impl PacketIo, batch: &mut Batch, stats: &WorkerStats) -> usize {
        let mut n = 0;
        for from in 0..self.shared.workers {
            if from == self.me {
                continue;
            }
            let pair = self.shared.pair(from, self.me);
            while batch.room() > 0 {
                let Some(slot) = pair.data.pop() else { break };
                let f = io.adopt(slot.port, &slot.buf[..slot.len]);
                let _ = pair.free.push(slot.buf);
                match f {
                    Some(f) => {
                        if batch.push(f) {
                            batch.meta_mut(batch.len() - 1).hops = slot.hops;
                        }
                        n += 1;
                    }
                    // no buffer free in this worker: the packet is lost, counted
                    None => stats.drop(crate::drop::DropReason::HandoffQueueFull, 1),
                }
            }
        }
        stats.handoff_in.add(n as u64);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::mem::{MemIo, TxSink};

    #[test]
    fn frames_cross_between_workers_and_buffers_come_back() {
        let h = Handoff::new(2, 2048);
        let (a, b) = (h.port(0), h.port(1));
        assert!(!a.send(0, b"self", 0, 0), "not to itself");
        for i in 0..DEPTH {
            assert!(a.send(1, &[i as u8; 60], 1, i as u8), "frame {i}");
        }
        assert!(!a.send(1, b"x", 1, 0), "queue full");
        assert!(!a.send(1, &[0; 4096], 1, 0), "too big");
        assert!(b.pending() && !a.pending());
        let mut io = MemIo::new(512, 2048, TxSink::Capture);
        let stats = WorkerStats::default();
        let mut got = 0;
        while b.pending() {
            let mut batch = Batch::new(64);
            got += b.receive(&mut io, &mut batch, &stats);
            for (i, (f, _)) in batch.iter().enumerate() {
                assert_eq!((f.port, f.len), (1, 60));
                // the hand-offs so far, this one counted
                let first = io.region_mut().data(&f).map(|d| d[0]);
                assert_eq!(Some(batch.meta(i).hops), first.map(|x| x.saturating_add(1)));
            }
            io.recycle(&mut batch);
        }
        assert_eq!(got, DEPTH);
        assert_eq!(stats.handoff_in.get(), DEPTH as u64);
        assert!(a.send(1, b"again", 1, 0), "buffers returned to the sender");
    }

    #[test]
    fn a_sleeping_receiver_is_woken_and_a_busy_one_is_not() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(&self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let h = Handoff::new(2, 256);
        let w = Arc::new(Count(Default::default()));
        h.set_waker(1, w.clone());
        let (a, b) = (h.port(0), h.port(1));
        a.send(1, b"x", 0, 0);
        a.wake(1);
        assert_eq!(w.0.load(Ordering::SeqCst), 0, "awake: no syscall");
        assert!(!b.sleep(), "a frame waits: do not sleep");
        let mut io = MemIo::new(8, 2048, TxSink::Capture);
        let mut batch = Batch::new(8);
        b.receive(&mut io, &mut batch, &WorkerStats::default());
        assert!(b.sleep());
        a.send(1, b"y", 0, 0);
        a.wake(1);
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        b.awake();
    }
}
