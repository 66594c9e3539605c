//! Frames, batches and verdicts.

use crate::drop::DropReason;
use arrayvec::ArrayVec;

/// Largest batch a worker processes at once. 64 is VPP's vector size and what OVS/DPDK use: big
/// enough to amortise the ring and snapshot overhead, small enough to stay in L1.
pub const MAX_BATCH: usize = 64;

/// Index of an interface in the appliance's port list (the config's `[[interface]]` order).
pub type Port = u16;

/// A packet in a buffer chunk: `addr` is the offset of its first byte in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub addr: u64,
    pub len: u32,
    /// The port it was received on.
    pub port: Port,
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still in the pipeline.
    Continue,
    /// Transmit on this port.
    Tx(Port),
    /// Dropped, and why.
    Drop(DropReason),
    /// Belongs to this worker's connection state: copied to it (see `handoff`).
    Handoff(u16),
    /// Taken by a stage (a copy held to be sent later, see `bandwidth`): the buffer is
    /// recycled, nothing is counted.
    Consumed,
}

/// What the stages learn about a packet on the way, beyond its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Security identity of the sender (from the tunnel VNI; 0 = not known yet).
    pub src_identity: u32,
    /// The packet arrived encapsulated and was decapsulated here.
    pub decapsulated: bool,
    /// The load-balancing stage handled it (and checked its policy): the policy stage skips it.
    pub lb: bool,
    /// Dropped by policy: the drop counter slot of the deciding policy (for its flow event).
    pub policy_slot: u16,
    /// Released by the bandwidth manager at its departure time: not paced again.
    pub paced: bool,
    /// Times the packet was handed from one worker to another (an ICMP error looking for its
    /// connection goes round the workers once at most).
    pub hops: u8,
}

/// A vector of frames with one verdict each.
pub struct Batch {
    frames: ArrayVec<Frame, MAX_BATCH>,
    verdicts: [Verdict; MAX_BATCH],
    meta: [Meta; MAX_BATCH],
    /// The batch size a backend fills up to (<= MAX_BATCH), from the config.
    limit: usize,
}

impl Batch {
    pub fn new(limit: usize) -> Self {
        Batch {
            frames: ArrayVec::new(),
            verdicts: [Verdict::Continue; MAX_BATCH],
            meta: [Meta::default(); MAX_BATCH],
            limit: limit.clamp(1, MAX_BATCH),
        }
    }
    pub fn len(&self) -> usize {
        self.frames.len()
    }
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    /// How many more frames fit.
    pub fn room(&self) -> usize {
        self.limit - self.frames.len()
    }
    /// Adds a frame with verdict `Continue`; false when full.
    pub fn push(&mut self, f: Frame) -> bool {
        if self.room() == 0 {
            return false;
        }
        self.verdicts[self.frames.len()] = Verdict::Continue;
        self.meta[self.frames.len()] = Meta::default();
        self.frames.push(f);
        true
    }
    pub fn frame(&self, i: usize) -> Frame {
        self.frames[i]
    }
    pub fn frame_mut(&mut self, i: usize) -> &mut Frame {
        &mut self.frames[i]
    }
    pub fn verdict(&self, i: usize) -> Verdict {
        self.verdicts[i]
    }
    pub fn set_verdict(&mut self, i: usize, v: Verdict) {
        self.verdicts[i] = v;
    }
    pub fn meta(&self, i: usize) -> Meta {
        self.meta[i]
    }
    pub fn meta_mut(&mut self, i: usize) -> &mut Meta {
        &mut self.meta[i]
    }
    pub fn iter(&self) -> impl Iterator<Item = (Frame, Verdict)> + '_ {
        self.frames
            .iter()
            .copied()
            .zip(self.verdicts.iter().copied())
    }
    /// Keeps only the frames for which `keep` is true, preserving order.
    pub fn retain(&mut self, mut keep: impl FnMut(Frame, Verdict) -> bool) {
        let mut w = 0;
        for r in 0..self.frames.len() {
            let (f, v) = (self.frames[r], self.verdicts[r]);
            if keep(f, v) {
                self.frames[w] = f;
                self.verdicts[w] = v;
                self.meta[w] = self.meta[r];
                w += 1;
            }
        }
        self.frames.truncate(w);
    }
    /// Removes every frame, returning them to the caller one by one.
    pub fn drain(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.frames.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_respects_limit_and_retain_keeps_order() {
        let mut b = Batch::new(3);
        for a in 0..4u64 {
            let pushed = b.push(Frame {
                addr: a,
                len: 1,
                port: 0,
            });
            assert_eq!(pushed, a < 3);
        }
        b.set_verdict(1, Verdict::Tx(1));
        b.retain(|_, v| v == Verdict::Continue);
        let addrs: Vec<u64> = b.iter().map(|(f, _)| f.addr).collect();
        assert_eq!(addrs, vec![0, 2]);
        assert_eq!(b.drain().count(), 2);
        assert!(b.is_empty());
    }
}
