//! Offline replay: read a pcap, run the pipeline over it, write what it transmitted as a pcap.
//!
//! The classic libpcap format (not pcapng): a 24-byte global header, then per packet a 16-byte
//! record header and the bytes. Both byte orders and microsecond/nanosecond magics are read;
//! microsecond little-endian is written. Only LINKTYPE_ETHERNET (1) is accepted.

use super::mem::{MemIo, TxSink};
use super::PacketIo;
use crate::packet::{Batch, Port};
use crate::region::Region;
use crate::stats::WorkerStats;
use std::io::{self, Read, Write};

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Snap length written in our headers: the largest frame a UMEM chunk can hold is smaller.
const SNAPLEN: u32 = 65535;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("not a pcap file (magic {0:#010x}); pcapng is not supported, convert with `editcap -F pcap`")]
    BadMagic(u32),
    #[error("pcap link type {0} is not Ethernet (1)")]
    LinkType(u32),
    #[error("record {index}: captured length {len} is larger than the snap length {snaplen}")]
    BadRecord { index: u64, len: u32, snaplen: u32 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One packet with its timestamp in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapPacket {
    pub ts_ns: u64,
    pub data: Vec<u8>,
}

pub struct PcapReader<R: Read> {
    r: R,
    swapped: bool,
    nanos: bool,
    snaplen: u32,
    index: u64,
}

impl<R: Read> PcapReader<R> {
    pub fn new(mut r: R) -> Result<Self, PcapError> {
        let mut h = [0u8; 24];
        r.read_exact(&mut h)?;
        let magic_le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (swapped, nanos) = match magic_le {
            MAGIC_US => (false, false),
            MAGIC_NS => (false, true),
            m if m.swap_bytes() == MAGIC_US => (true, false),
            m if m.swap_bytes() == MAGIC_NS => (true, true),
            m => return Err(PcapError::BadMagic(m)),
        };
        let rd = |o: usize| {
            let v = u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
            if swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        let snaplen = rd(16);
        let link = rd(20) & 0x0fff_ffff;
        if link != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType(link));
        }
        Ok(PcapReader {
            r,
            swapped,
            nanos,
            snaplen: snaplen.max(1),
            index: 0,
        })
    }

    /// The next packet, None at a clean end of file.
    pub fn next_packet(&mut self) -> Result<Option<PcapPacket>, PcapError> {
        let mut h = [0u8; 16];
        match self.r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let rd = |o: usize| {
            let v = u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
            if self.swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        let (sec, frac, caplen) = (rd(0), rd(4), rd(8));
        if caplen > self.snaplen.max(SNAPLEN) {
            return Err(PcapError::BadRecord {
                index: self.index,
                len: caplen,
                snaplen: self.snaplen,
            });
        }
        let mut data = vec![0u8; caplen as usize];
        self.r.read_exact(&mut data)?;
        self.index += 1;
        let ns = if self.nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        Ok(Some(PcapPacket {
            ts_ns: u64::from(sec) * 1_000_000_000 + ns,
            data,
        }))
    }
}

pub struct PcapWriter<W: Write> {
    w: W,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_US.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        w.write_all(&h)?;
        Ok(PcapWriter { w })
    }

    pub fn write_packet(&mut self, ts_ns: u64, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("packet too large"))?;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(((ts_ns % 1_000_000_000) / 1000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(data)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// The pcap backend: frames come from a pcap reader (as received on `port`), transmitted frames go
/// to a pcap writer with the timestamp of the packet they came from.
pub struct PcapIo<R: Read, W: Write> {
    mem: MemIo,
    reader: PcapReader<R>,
    writer: PcapWriter<W>,
    port: Port,
    /// Input timestamp per chunk index, so output keeps the input's timing.
    ts_by_chunk: Vec<u64>,
    eof: bool,
    /// First read or write error; replay stops at it.
    pub error: Option<PcapError>,
    /// Input packets that did not fit a buffer (larger than a chunk).
    pub oversized: u64,
}

/// Chunks of the replay region: one batch in flight plus a refill, with slack.
const PCAP_FRAMES: u32 = 256;
const PCAP_FRAME_SIZE: u32 = 16384;

impl<R: Read, W: Write> PcapIo<R, W> {
    pub fn new(reader: PcapReader<R>, writer: PcapWriter<W>, port: Port) -> Self {
        PcapIo {
            mem: MemIo::new(PCAP_FRAMES, PCAP_FRAME_SIZE, TxSink::Capture),
            reader,
            writer,
            port,
            ts_by_chunk: vec![0; PCAP_FRAMES as usize],
            eof: false,
            error: None,
            oversized: 0,
        }
    }
    /// True once the input is exhausted (or failed) and every packet was processed.
    pub fn done(&self) -> bool {
        (self.eof || self.error.is_some()) && self.mem.pending_rx() == 0
    }
    pub fn into_writer(self) -> W {
        self.writer.into_inner()
    }
}

impl<R: Read, W: Write> PacketIo for PcapIo<R, W> {
    fn rx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        while !self.eof && self.error.is_none() && self.mem.pending_rx() < batch.room() {
            match self.reader.next_packet() {
                Ok(Some(p)) => {
                    if self.mem.free_frames() == 0 {
                        break;
                    }
                    if !self.mem.inject(self.port, &p.data) {
                        self.oversized += 1;
                        continue;
                    }
                    let chunk = self.mem.last_injected_chunk();
                    let idx = (chunk / u64::from(PCAP_FRAME_SIZE)) as usize;
                    self.ts_by_chunk[idx] = p.ts_ns;
                }
                Ok(None) => self.eof = true,
                Err(e) => self.error = Some(e),
            }
        }
        self.mem.rx_burst(batch, stats)
    }

    fn tx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        // timestamps must be looked up before the mem backend recycles the chunks
        let mut ts = [0u64; crate::packet::MAX_BATCH];
        let mut k = 0;
        for (f, v) in batch.iter() {
            if matches!(v, crate::packet::Verdict::Tx(_)) {
                let idx = (f.addr / u64::from(PCAP_FRAME_SIZE)) as usize;
                ts[k] = self.ts_by_chunk[idx];
                k += 1;
            }
        }
        let n = self.mem.tx_burst(batch, stats);
        for (i, (_port, bytes)) in self.mem.take_sent().into_iter().enumerate() {
            if self.error.is_none() {
                if let Err(e) = self.writer.write_packet(ts[i], &bytes) {
                    self.error = Some(e.into());
                }
            }
        }
        n
    }

    fn recycle(&mut self, batch: &mut Batch) {
        self.mem.recycle(batch)
    }

    fn service(&mut self, _stats: &WorkerStats) {}

    fn region_mut(&mut self) -> &mut Region {
        self.mem.region_mut()
    }

    fn adopt(&mut self, port: crate::packet::Port, bytes: &[u8]) -> Option<crate::packet::Frame> {
        self.mem.adopt(port, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(1_500_000_123_000, &[1, 2, 3]).unwrap();
        w.write_packet(2_000_000_000, &[]).unwrap();
        let bytes = w.into_inner();
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        let a = r.next_packet().unwrap().unwrap();
        assert_eq!((a.ts_ns, a.data), (1_500_000_123_000, vec![1, 2, 3]));
        assert_eq!(r.next_packet().unwrap().unwrap().data, Vec::<u8>::new());
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn rejects_pcapng_and_other_links_and_oversized_records() {
        let ng = [
            0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(matches!(
            PcapReader::new(&ng[..]),
            Err(PcapError::BadMagic(_))
        ));
        let mut w = PcapWriter::new(Vec::new()).unwrap().into_inner();
        w[20] = 113; // LINUX_SLL
        assert!(matches!(
            PcapReader::new(&w[..]),
            Err(PcapError::LinkType(113))
        ));
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(0, &[0; 4]).unwrap();
        let mut b = w.into_inner();
        b[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = PcapReader::new(&b[..]).unwrap();
        assert!(matches!(r.next_packet(), Err(PcapError::BadRecord { .. })));
        // a truncated record body is an error, not a silent end
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(0, &[0; 10]).unwrap();
        let b = w.into_inner();
        let mut r = PcapReader::new(&b[..b.len() - 3]).unwrap();
        assert!(r.next_packet().is_err());
    }
}
