//! Drop reasons: stable numbers and names, used as metric labels and in flow events.
//!
//! Where Cilium has a code for the same thing we use its number (`bpf/lib/common.h`, as a positive
//! value) and Hubble's name (`flow.proto` `DropReason`; Cilium's constant where the names differ),
//! so operators recognise them. sluice's own
//! reasons start at 1000, clear of Cilium's range.

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal; )*) => {
        /// Why a packet was dropped.
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $( $(#[$doc])* $variant = $code, )* }

        impl DropReason {
            /// Every reason, in a stable order (the index is used for per-reason counter arrays).
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];
            /// The stable numeric code.
            pub const fn code(self) -> u16 { self as u16 }
            /// The stable name (Hubble's where one exists).
            pub const fn name(self) -> &'static str {
                match self { $( DropReason::$variant => $name, )* }
            }
            /// Index into `ALL`, for counter arrays.
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
            }
        }
    };
}

drop_reasons! {
    /// No policy rule allows it in a direction where policy applies (Cilium DROP_POLICY).
    PolicyDenied = 133, "POLICY_DENIED";
    /// Truncated or inconsistent headers (Cilium DROP_INVALID).
    Malformed = 134, "INVALID_PACKET_DROPPED";
    /// Would not fit the underlay MTU once encapsulated; an ICMP error went back (DROP_FRAG_NEEDED).
    FragNeeded = 136, "FRAG_NEEDED";
    /// Not IPv4 or IPv6 (Cilium DROP_UNKNOWN_L3).
    UnsupportedL3 = 139, "UNSUPPORTED_L3_PROTOCOL";
    /// A Geneve option marked critical that sluice does not know (RFC 8926: must drop).
    InvalidGeneveOption = 149, "INVALID_GENEVE_OPTION";
    /// Connection tracking table full and nothing evictable: the new flow is not admitted.
    CtMapInsertionFailed = 155, "CT_MAP_INSERTION_FAILED";
    /// A service frontend with no backend that can take a new connection.
    ServiceBackendNotFound = 158, "SERVICE_BACKEND_NOT_FOUND";
    /// The remote node has no address in the underlay's family (DROP_NO_TUNNEL_ENDPOINT).
    NoTunnelEndpoint = 160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT";
    /// No SNAT address configured for the packet's family.
    NatNoMapping = 167, "NAT_NO_MAPPING";
    /// No route to the destination (Cilium DROP_NO_FIB).
    NoRoute = 169, "FIB_LOOKUP_FAILED";
    /// Tunnel traffic from an address that is not a known node (DROP_UNKNOWN_SENDER).
    UnknownSender = 172, "UNKNOWN_SENDER";
    /// A VNI that is not a valid identity (DROP_INVALID_VNI).
    InvalidVni = 183, "INVALID_VNI";
    /// An explicit deny rule matched (Cilium DROP_POLICY_DENY).
    PolicyDeny = 181, "POLICY_DENY";
    /// TTL or hop limit would reach zero (Cilium DROP_TTL_EXCEEDED).
    TtlExceeded = 196, "TTL_EXCEEDED";
    /// The next hop's MAC address is not known yet; resolution was requested from the kernel.
    NoNeighbor = 1001, "NEIGHBOR_UNRESOLVED";
    /// The egress interface's transmit ring was full.
    TxRingFull = 1002, "TX_RING_FULL";
    /// The route points at an interface this worker does not serve.
    NoEgressPort = 1003, "NO_EGRESS_PORT";
    /// The frame's buffer has no headroom left for the encapsulation headers.
    NoHeadroom = 1004, "NO_HEADROOM";
    /// Every SNAT source port toward that backend is in use.
    SnatPortsExhausted = 1005, "SNAT_PORTS_EXHAUSTED";
    /// The packet belongs to another worker's connection and that worker's hand-off queue (or
    /// its buffer pool) was full.
    HandoffQueueFull = 1006, "HANDOFF_QUEUE_FULL";
    /// A packet of an HTTP request that L7 policy refused (answered 403), or a later packet of
    /// that refused connection.
    PolicyL7Denied = 1007, "POLICY_L7_DENIED";
    /// A TCP segment of an L7-inspected connection beyond a hole in its byte stream: the client
    /// resends in order.
    L7OutOfOrder = 1008, "L7_SEGMENT_OUT_OF_ORDER";
    /// Over its pod's egress bandwidth limit (`kubernetes.io/egress-bandwidth`).
    BandwidthExceeded = 1009, "BANDWIDTH_LIMIT_EXCEEDED";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_indexed() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            for o in &DropReason::ALL[i + 1..] {
                assert_ne!(r.code(), o.code());
                assert_ne!(r.name(), o.name());
            }
        }
        assert_eq!(DropReason::TtlExceeded.code(), 196);
        assert_eq!(DropReason::Malformed.name(), "INVALID_PACKET_DROPPED");
    }
}
