// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * sluice DSR decapsulation, for backends (as Katran's decap program): strips the tunnel sluice's
 * DSR dispatch puts around a client's packet, and hands the inner packet to the kernel, which
 * delivers it to the service address held on a local interface. The backend then answers the
 * client directly.
 *
 * Decapsulated (everything else passes untouched):
 *   - IPv4 without options, not a fragment, protocol 4 (IPIP)        -> inner IPv4
 *   - IPv6, next header 41 (IPv6-in-IPv6)                            -> inner IPv6
 *   - IPv4/IPv6 UDP to the configured Geneve port, version 0, protocol type IPv4/IPv6
 *                                                                    -> inner IPv4/IPv6
 * The outer source must be one of the load balancers in `allowed` when that map is not empty,
 * so a host cannot be sent packets with forged inner sources from anywhere.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Load balancer addresses a backend accepts tunnels from; a handful in practice. */
#define MAX_ALLOWED 64

struct genevehdr {
	__u8 ver_optlen; /* version (2 bits), option length in 4-byte words (6 bits) */
	__u8 flags;
	__be16 proto;
	__u8 vni[3];
	__u8 reserved;
};

/* Counter slots; keep in sync with DecapCounters in lib.rs. */
enum {
	CNT_DECAPSULATED = 0,
	CNT_PASSED = 1,
	CNT_REFUSED = 2, /* a tunnel from a source not in `allowed` */
	CNT_MAX = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} decap_counters SEC(".maps");

/* Allowed outer sources: IPv6 or IPv4-mapped IPv6 -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ALLOWED);
	__type(key, __u8[16]);
	__type(value, __u8);
} allowed SEC(".maps");

/* Written by the loader once, after load (keep in sync with DecapConfig in decap.rs). */
struct decap_config {
	__u16 geneve_port;  /* host byte order; 0 = no Geneve */
	__u8 check_source;  /* whether `allowed` is enforced (an empty list allows every source) */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_config);
} config SEC(".maps");

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&decap_counters, &slot);
	if (c)
		*c += 1;
	return verdict;
}

static __always_inline int source_allowed(const struct decap_config *cfg, const __u8 *src, int v6)
{
	__u8 key[16] = {};
	if (!cfg->check_source)
		return 1;
	if (v6) {
		__builtin_memcpy(key, src, 16);
	} else {
		key[10] = 0xff;
		key[11] = 0xff;
		__builtin_memcpy(key + 12, src, 4);
	}
	return bpf_map_lookup_elem(&allowed, key) != NULL;
}

/* The inner protocol a Geneve header at `g` carries, and the Geneve header's length; 0 if it is
 * not one this program decapsulates. */
static __always_inline __u16 geneve_inner(struct genevehdr *g, void *end, int *len)
{
	if ((void *)(g + 1) > end)
		return 0;
	if (g->ver_optlen >> 6) /* version 0 only */
		return 0;
	*len = sizeof(*g) + (g->ver_optlen & 0x3f) * 4;
	if (g->proto == bpf_htons(ETH_P_IP) || g->proto == bpf_htons(ETH_P_IPV6))
		return g->proto;
	return 0;
}

SEC("xdp")
int sluice_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__be16 inner = 0;
	int outer = 0;
	__u32 zero = 0;
	const struct decap_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg)
		return XDP_PASS;

	if ((void *)(eth + 1) > end)
		return count(CNT_PASSED, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return count(CNT_PASSED, XDP_PASS);
		if (ip->protocol == IPPROTO_IPIP) {
			inner = bpf_htons(ETH_P_IP);
			outer = sizeof(*ip);
		} else if (ip->protocol == IPPROTO_UDP && cfg->geneve_port) {
			struct udphdr *udp = (void *)(ip + 1);
			int glen = 0;
			if ((void *)(udp + 1) > end || udp->dest != bpf_htons(cfg->geneve_port))
				return count(CNT_PASSED, XDP_PASS);
			inner = geneve_inner((void *)(udp + 1), end, &glen);
			outer = sizeof(*ip) + sizeof(*udp) + glen;
		}
		if (!inner)
			return count(CNT_PASSED, XDP_PASS);
		if (!source_allowed(cfg, (__u8 *)&ip->saddr, 0))
			return count(CNT_REFUSED, XDP_DROP);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return count(CNT_PASSED, XDP_PASS);
		if (ip6->nexthdr == IPPROTO_IPV6) {
			inner = bpf_htons(ETH_P_IPV6);
			outer = sizeof(*ip6);
		} else if (ip6->nexthdr == IPPROTO_UDP && cfg->geneve_port) {
			struct udphdr *udp = (void *)(ip6 + 1);
			int glen = 0;
			if ((void *)(udp + 1) > end || udp->dest != bpf_htons(cfg->geneve_port))
				return count(CNT_PASSED, XDP_PASS);
			inner = geneve_inner((void *)(udp + 1), end, &glen);
			outer = sizeof(*ip6) + sizeof(*udp) + glen;
		}
		if (!inner)
			return count(CNT_PASSED, XDP_PASS);
		if (!source_allowed(cfg, ip6->saddr.s6_addr, 1))
			return count(CNT_REFUSED, XDP_DROP);
	} else {
		return count(CNT_PASSED, XDP_PASS);
	}

	/* the Ethernet header moves up to the inner packet, its type now the inner's */
	struct ethhdr copy = *eth;
	copy.h_proto = inner;
	if (bpf_xdp_adjust_head(ctx, outer))
		return count(CNT_PASSED, XDP_PASS);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return count(CNT_REFUSED, XDP_DROP);
	*eth = copy;
	return count(CNT_DECAPSULATED, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
