// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * sluice XDP steering program.
 *
 * Redirects to the AF_XDP socket bound on the receiving queue only the traffic the appliance owns;
 * everything else (ARP, SSH to the host, unrelated flows) continues into the kernel with XDP_PASS.
 *
 * Ownership precedence (first match wins):
 *   1. exact  (dst IP, L4 protocol, dst port)      -- a service VIP:port
 *   2. wildcard port (dst IP, L4 protocol, port 0)  -- every port of one protocol on an IP
 *   3. wildcard IP   (dst IP, proto 0, port 0)      -- everything to an IP (routed prefixes, node IPs)
 *   4. any IP        (::, UDP, port)                -- tunnel UDP ports (VXLAN 8472/4789, Geneve 6081)
 *   5. prefix        (longest match on dst IP)      -- routed prefixes, remote pod CIDRs
 * IPv4 addresses are stored as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one map serves both families.
 *
 * If no socket is bound for the receiving queue the packet is passed to the kernel and counted
 * (never a silent drop), except while that queue is held: see `hold` below.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* One queue per worker; 64 covers every NIC this appliance targets (the loader refuses more). */
#define MAX_QUEUES 64
/* Owned entries: services x ports plus node IPs; sized like Cilium's default lb map (65536). */
#define MAX_OWNED 65536
/* 802.1Q / 802.1ad tags walked before giving up on the packet (QinQ). */
#define MAX_VLAN_TAGS 2
/* ICMPv6 router solicitation .. redirect (RFC 4861). */
#define ICMPV6_NDP_FIRST 133
#define ICMPV6_NDP_LAST 137

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct owned_key {
	__u8 addr[16];  /* IPv6, or IPv4-mapped IPv6 */
	__u8 proto;     /* IPPROTO_TCP / IPPROTO_UDP, 0 = any */
	__u8 pad;
	__be16 port;    /* network order, 0 = any */
};

/* Counter slots; the loader reads them by these indices (keep in sync with counters.rs). */
enum {
	CNT_STEERED = 0,
	CNT_PASSED = 1,
	CNT_NO_SOCKET = 2,
	CNT_HELD = 3,
	CNT_SYN_SHED = 4,
	CNT_MAX = 5,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_OWNED);
	__type(key, struct owned_key);
	__type(value, __u32); /* reserved for flags; presence means owned */
} owned SEC(".maps");

/* Prefixes owned as a whole: routed networks and remote nodes' pod CIDRs (encapsulated). */
#define MAX_OWNED_PREFIXES 16384

struct prefix_key {
	__u32 prefixlen; /* bits of addr that count, IPv4 as mapped IPv6: /24 is 96 + 24 */
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_OWNED_PREFIXES);
	__type(key, struct prefix_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
} owned_prefixes SEC(".maps");

/*
 * Restart hold (decision 013), per queue: until this CLOCK_MONOTONIC time in ns, owned traffic
 * arriving on a queue with no socket is dropped (and counted) instead of passed. While sluiced
 * restarts, its clients and backends retransmit into the gap and the next sluiced, which adopts
 * the connection table, carries on; passed, the kernel would answer them with resets. sluiced
 * writes it for the queues it serves: before it attaches, as a heartbeat, and when it stops.
 * Once it expires (sluiced stopped for good, or crashed and was not restarted), the kernel path
 * takes over. Zero: not held.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u64);
} hold SEC(".maps");

/*
 * Overload, per queue: set by the worker serving the queue while its AF_XDP receive ring is
 * backed up (over half full; cleared under an eighth). New TCP connections (SYN without ACK) to
 * owned addresses are then dropped here, counted, before they take ring slots: a SYN flood
 * beyond what the worker processes cannot crowd out the packets of established connections,
 * which otherwise the kernel drops with everyone else's when the ring overflows. Clients of
 * legitimate new connections retransmit their SYN.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} pressure SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

/* Owned, but no socket on queue q: dropped while the queue is held, else the kernel's. */
static __always_inline int no_socket(__u32 q)
{
	__u64 *until = bpf_map_lookup_elem(&hold, &q);

	if (until && bpf_ktime_get_ns() < *until) {
		count(CNT_HELD);
		return XDP_DROP;
	}
	count(CNT_NO_SOCKET);
	return XDP_PASS;
}

/* A TCP SYN without ACK (a new connection) arriving on queue q while q is under pressure. */
static __always_inline int shed_syn(void *l4, void *data_end, __u32 q)
{
	struct tcphdr *th = l4;
	__u32 *on;

	if ((void *)(th + 1) > data_end || !th->syn || th->ack)
		return 0;
	on = bpf_map_lookup_elem(&pressure, &q);
	return on && *on;
}

static __always_inline int is_owned(struct owned_key *k)
{
	struct prefix_key pk = { .prefixlen = 128 };
	__be16 port = k->port;
	__u8 proto = k->proto;

	__builtin_memcpy(pk.addr, k->addr, 16);

	if (bpf_map_lookup_elem(&owned, k))
		return 1;
	k->port = 0;
	if (bpf_map_lookup_elem(&owned, k))
		return 1;
	k->proto = 0;
	if (bpf_map_lookup_elem(&owned, k))
		return 1;
	if (proto == IPPROTO_UDP) {
		__builtin_memset(k->addr, 0, sizeof(k->addr));
		k->proto = IPPROTO_UDP;
		k->port = port;
		if (bpf_map_lookup_elem(&owned, k))
			return 1;
	}
	return bpf_map_lookup_elem(&owned_prefixes, &pk) != 0;
}

/*
 * An ICMP error about a packet the appliance sent (RFC 792 / 4443: the error quotes the
 * packet's IP header and at least 8 bytes after it): the key of the quoted packet's source,
 * (outer destination, quoted protocol, quoted source port). It is a frontend for an error about
 * a reply the appliance sent a client, an SNAT port for one about a packet it sent a backend;
 * the worker then translates the error along the connection. 0 if not such an error.
 */
static __always_inline int icmp_error_key(void *l4, void *data_end, struct owned_key *key,
					  int v6)
{
	__u8 *type = l4;
	struct udphdr *quoted;

	if ((void *)(type + 8) > data_end)
		return 0;
	if (v6) {
		struct ipv6hdr *ip6 = (void *)(type + 8);

		/* destination unreachable, packet too big, time exceeded, parameter problem */
		if (*type < 1 || *type > 4 || (void *)(ip6 + 1) > data_end)
			return 0;
		key->proto = ip6->nexthdr;
		quoted = (void *)(ip6 + 1);
	} else {
		struct iphdr *ip = (void *)(type + 8);

		/* destination unreachable, time exceeded, parameter problem */
		if ((*type != 3 && *type != 11 && *type != 12) || (void *)(ip + 1) > data_end)
			return 0;
		if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x1fff)))
			return 0;
		key->proto = ip->protocol;
		quoted = (void *)ip + ip->ihl * 4;
	}
	if (key->proto != IPPROTO_TCP && key->proto != IPPROTO_UDP)
		return 0;
	if ((void *)quoted + 4 > data_end)
		return 0;
	key->port = quoted->source;
	return 1;
}

SEC("xdp")
int sluice_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct owned_key key = {};
	void *l4;
	__u16 proto;
	__u8 l4proto;
	__u32 q;
	int i;

	if ((void *)(eth + 1) > data_end)
		return pass();
	proto = eth->h_proto;
	l4 = eth + 1;

#pragma unroll
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vh = l4;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return pass();
		proto = vh->encap_proto;
		l4 = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l4;

		if ((void *)(ip + 1) > data_end)
			return pass();
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->daddr, 4);
		key.proto = ip->protocol;
		/* Non-first fragments carry no L4 header: they match on IP only (wildcard entries). */
		if (ip->frag_off & bpf_htons(0x1fff))
			key.proto = 0;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l4;

		if ((void *)(ip6 + 1) > data_end)
			return pass();
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
		/* Extension headers are not walked here: such packets match IP-wide entries only. */
		key.proto = ip6->nexthdr;
		l4 = ip6 + 1;
		/* Neighbour discovery (ICMPv6 133..137) is the kernel's, even for owned addresses. */
		if (key.proto == IPPROTO_ICMPV6) {
			__u8 *type = l4;

			if ((void *)(type + 1) > data_end)
				return pass();
			if (*type >= ICMPV6_NDP_FIRST && *type <= ICMPV6_NDP_LAST)
				return pass();
		}
	} else {
		return pass(); /* ARP, LLDP, ...: the kernel's business */
	}

	/* exactly an owned frontend or SNAT port: no wildcard entries for errors */
	if (key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6) {
		struct owned_key err = key;

		if (icmp_error_key(l4, data_end, &err, key.proto == IPPROTO_ICMPV6) &&
		    bpf_map_lookup_elem(&owned, &err)) {
			l4proto = key.proto;
			goto steer;
		}
	}

	if (key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP) {
		/* source and dest ports sit at the same offsets in TCP and UDP */
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			key.port = 0;
		else
			key.port = uh->dest;
	} else {
		key.proto = 0;
	}

	l4proto = key.proto; /* is_owned() rewrites the key for its wildcard lookups */
	if (!is_owned(&key))
		return pass();

steer:
	q = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &q))
		return no_socket(q);
	if (l4proto == IPPROTO_TCP && shed_syn(l4, data_end, q)) {
		count(CNT_SYN_SHED);
		return XDP_DROP;
	}
	count(CNT_STEERED);
	/* XDP_PASS as the fallback action: should the socket vanish between lookup and redirect. */
	return bpf_redirect_map(&xsks, q, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
