// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Two programs of sluice's forwarding benchmark.
 *
 * sluice_xdp_sink (`sluice-pktgen --engine sink`): counts and drops every IP frame (ARP and
 * the rest pass), so that what a datapath under test forwards costs nothing more once it
 * arrives.
 *
 * sluice_xdp_fwd, the kernel-XDP baseline (`sluice-pktgen --engine xdp-fwd`):
 * every IPv4 frame gets the next hop's MAC and this side's, then leaves by `out_ifindex` with
 * bpf_redirect (or by the interface it came in on with XDP_TX, when they are the same). No
 * lookup, no TTL: the cheapest forwarding XDP can do, to compare a datapath against.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct fwd_cfg {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 out_ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_cfg);
} fwd SEC(".maps");

/* frames forwarded, per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} forwarded SEC(".maps");

SEC("xdp")
int sluice_xdp_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	struct fwd_cfg *c = bpf_map_lookup_elem(&fwd, &zero);
	__u64 *n = bpf_map_lookup_elem(&forwarded, &zero);

	if (!c || !n || (void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, c->dst_mac, 6);
	__builtin_memcpy(eth->h_source, c->src_mac, 6);
	*n += 1;
	if (c->out_ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(c->out_ifindex, 0);
}

/* frames counted and dropped by the sink, per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sunk SEC(".maps");

SEC("xdp")
int sluice_xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sunk, &zero);

	/* ARP and the rest pass: the neighbours on the link must still resolve */
	if ((void *)(eth + 1) > data_end ||
	    (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6)))
		return XDP_PASS;
	if (n)
		*n += 1;
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
