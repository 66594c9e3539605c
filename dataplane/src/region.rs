//! A packet-buffer area cut into equal chunks: the AF_XDP UMEM, or its in-memory twin.
//!
//! Frames are chunk-aligned (`frame_size` is a power of two), so the chunk of any address inside
//! it is `addr & !(frame_size - 1)`: this is how completions and pushes find their chunk.

use crate::packet::Frame;
use core::ptr::NonNull;

pub struct Region {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    /// Bytes at the start of each chunk never handed out as packet data (kernel XDP headroom and
    /// ours): room for push_head (encapsulation).
    headroom: u32,
    /// Keeps heap-backed regions alive (the mem backend); None for mmap-ed UMEM.
    _owned: Option<Box<[u8]>>,
}

// SAFETY: the region is plain memory; it is used by the single worker that owns it.
unsafe impl Send for Region {}

impl Region {
    /// A heap-backed region of `frames` chunks.
    pub fn alloc(frames: u32, frame_size: u32, headroom: u32) -> Region {
        assert!(frame_size.is_power_of_two() && headroom < frame_size);
        let mut mem = vec![0u8; frames as usize * frame_size as usize].into_boxed_slice();
        let base = NonNull::new(mem.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Region {
            base,
            len: mem.len(),
            frame_size,
            headroom,
            _owned: Some(mem),
        }
    }

    /// Wraps memory owned elsewhere (the UMEM mapping).
    ///
    /// # Safety
    /// `base..base+len` must stay valid for reads and writes for the life of the region and be
    /// accessed by nothing else but the kernel's DMA/copy into chunks the region's user handed it.
    pub unsafe fn from_raw(
        base: NonNull<u8>,
        len: usize,
        frame_size: u32,
        headroom: u32,
    ) -> Region {
        assert!(frame_size.is_power_of_two() && headroom < frame_size);
        Region {
            base,
            len,
            frame_size,
            headroom,
            _owned: None,
        }
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }
    pub fn frames(&self) -> u32 {
        (self.len / self.frame_size as usize) as u32
    }
    pub fn headroom(&self) -> u32 {
        self.headroom
    }
    /// The chunk start of an address.
    pub fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }
    /// Where packet data starts in a fresh chunk.
    pub fn data_start(&self, chunk: u64) -> u64 {
        chunk + u64::from(self.headroom)
    }
    /// Largest packet a chunk holds.
    pub fn max_len(&self) -> u32 {
        self.frame_size - self.headroom
    }

    fn valid(&self, f: &Frame) -> bool {
        let end = f.addr.checked_add(u64::from(f.len));
        let chunk_end = self.chunk_of(f.addr) + u64::from(self.frame_size);
        matches!(end, Some(e) if e <= chunk_end && e <= self.len as u64)
    }

    /// The bytes of `f`, or None if the frame does not lie inside one chunk of this region.
    pub fn data(&self, f: &Frame) -> Option<&[u8]> {
        if !self.valid(f) {
            return None;
        }
        // SAFETY: valid() checked addr..addr+len lies inside the region; `&self` keeps it alive.
        Some(unsafe {
            core::slice::from_raw_parts(self.base.as_ptr().add(f.addr as usize), f.len as usize)
        })
    }

    /// The bytes of `f`, mutably.
    pub fn data_mut(&mut self, f: &Frame) -> Option<&mut [u8]> {
        if !self.valid(f) {
            return None;
        }
        // SAFETY: bounds as in data(); `&mut self` makes this the only live view into the region.
        Some(unsafe {
            core::slice::from_raw_parts_mut(self.base.as_ptr().add(f.addr as usize), f.len as usize)
        })
    }

    /// Grows the frame by `n` bytes at the front (for encapsulation); false if the chunk's
    /// headroom is too small.
    pub fn push_head(&self, f: &mut Frame, n: u32) -> bool {
        let chunk = self.chunk_of(f.addr);
        if f.addr - chunk < u64::from(n) {
            return false;
        }
        f.addr -= u64::from(n);
        f.len += n;
        true
    }

    /// Shrinks the frame by `n` bytes at the front (for decapsulation).
    pub fn pull_head(&self, f: &mut Frame, n: u32) -> bool {
        if f.len < n {
            return false;
        }
        f.addr += u64::from(n);
        f.len -= n;
        true
    }

    /// Copies `bytes` into chunk `chunk` as a fresh packet; None if it does not fit.
    pub fn write_packet(&mut self, chunk: u64, port: u16, bytes: &[u8]) -> Option<Frame> {
        if bytes.len() > self.max_len() as usize {
            return None;
        }
        let f = Frame {
            addr: self.data_start(chunk),
            len: bytes.len() as u32,
            port,
        };
        self.data_mut(&f)?.copy_from_slice(bytes);
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stay_inside_their_chunk() {
        let mut r = Region::alloc(4, 2048, 256);
        let mut f = r.write_packet(2048, 0, &[1, 2, 3]).unwrap();
        assert_eq!(f.addr, 2048 + 256);
        assert_eq!(r.data(&f).unwrap(), &[1, 2, 3]);
        assert!(r.push_head(&mut f, 256));
        assert!(!r.push_head(&mut f, 1));
        assert!(r.pull_head(&mut f, 259));
        assert!(!r.pull_head(&mut f, 1));
        // a frame crossing its chunk end or the region end is refused
        assert!(r
            .data(&Frame {
                addr: 2000,
                len: 100,
                port: 0
            })
            .is_none());
        assert!(r
            .data(&Frame {
                addr: 4 * 2048,
                len: 1,
                port: 0
            })
            .is_none());
        assert!(r.write_packet(0, 0, &[0u8; 1793]).is_none());
    }
}
