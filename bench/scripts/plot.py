#!/usr/bin/env python3
"""Renders the newest benchmark results under bench/results/ as SVG charts (no dependencies):

  service-scale.svg  new TCP flows/s through 1..10,000 services: iptables, nftables, sluiced
  latency.svg        UDP round-trip percentiles: kernel forwarding, sluiced adaptive and busy
  forward-rate.svg   forwarded packets/s against the offered load: kernel, sluiced
  stages.svg         ns per packet of each pipeline stage, from criterion's last run
                     (target/criterion, written by `make bench`)

usage: plot.py [RESULTS_DIR]   (default bench/results); prints the files it wrote.
"""
import glob
import json
import os
import sys

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"]
W, H, PAD = 720, 360, 60


def newest(d, prefix, keep=lambda r: True):
    for f in sorted(glob.glob(os.path.join(d, prefix + "-*.json")), reverse=True):
        r = json.load(open(f))
        if keep(r):
            return r
    return None


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;")


def bars(title, groups, series, values, unit, path):
    """Grouped bar chart: values[series][group]."""
    top = max([v for vs in values for v in vs if v is not None] + [1]) * 1.1
    gw = (W - 2 * PAD) / max(len(groups), 1)
    bw = gw * 0.8 / max(len(series), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15">{esc(title)}</text>',
           f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
           f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">{esc(unit)}</text>']
    for t in range(5):
        v = top * t / 4
        y = H - PAD - (H - 2 * PAD) * t / 4
        out.append(f'<line x1="{PAD}" y1="{y}" x2="{W - PAD}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{PAD - 4}" y="{y + 4}" text-anchor="end">{v:,.0f}</text>')
    for g, name in enumerate(groups):
        x0 = PAD + g * gw + gw * 0.1
        out.append(f'<text x="{PAD + g * gw + gw / 2}" y="{H - PAD + 18}" text-anchor="middle">{esc(name)}</text>')
        for s in range(len(series)):
            v = values[s][g]
            if v is None:
                continue
            h = (H - 2 * PAD) * v / top
            x = x0 + s * bw
            out.append(f'<rect x="{x:.1f}" y="{H - PAD - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{COLORS[s % 4]}"/>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{H - PAD - h - 3:.1f}" text-anchor="middle" font-size="10">{v:,.0f}</text>')
    for s, name in enumerate(series):
        out.append(f'<rect x="{PAD + s * 150}" y="{H - 22}" width="12" height="12" fill="{COLORS[s % 4]}"/>')
        out.append(f'<text x="{PAD + s * 150 + 16}" y="{H - 12}">{esc(name)}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))
    print(path)


def stages(out):
    """ns/packet of every criterion bench measured per packet (throughput in elements)."""
    rows = []
    for bench in sorted(glob.glob("target/criterion/*/*/new/benchmark.json")):
        b = json.load(open(bench))
        n = (b.get("throughput") or {}).get("Elements")
        group = b["group_id"]
        if not n or group in ("pipeline_scaling",):
            continue
        est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
        rows.append((f"{group}: {b['function_id']}"[:60], est["mean"]["point_estimate"] / n))
    if not rows:
        return
    # horizontal bars: one per stage
    h = 26 * len(rows) + 60
    top = max(v for _, v in rows) * 1.15
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{h}" font-family="sans-serif" font-size="11">',
           '<text x="450" y="18" text-anchor="middle" font-size="15">ns per packet by stage (criterion, mem backend)</text>']
    for i, (name, v) in enumerate(rows):
        y = 34 + 26 * i
        w = 480 * v / top
        svg.append(f'<text x="396" y="{y + 14}" text-anchor="end">{esc(name)}</text>')
        svg.append(f'<rect x="400" y="{y}" width="{w:.1f}" height="18" fill="{COLORS[0]}"/>')
        svg.append(f'<text x="{404 + w:.1f}" y="{y + 14}">{v:,.1f}</text>')
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg))
    print(out)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    stages(os.path.join(d, "stages.svg"))
    ss = newest(d, "service-scale", lambda r: r.get("sluiced_poll_mode", "busy") == "busy")
    if ss:
        rows = ss["results"]
        ns = sorted({r["services"] for r in rows})
        dps = ["iptables", "nftables", "sluiced"]
        val = lambda dp, n, k: next((r[k] for r in rows if r["datapath"] == dp and r["services"] == n), None)
        bars("New TCP flows per second to the last of N services", [f"{n:,} services" for n in ns],
             dps, [[val(dp, n, "new_flows_pps") for n in ns] for dp in dps], "new flows/s",
             os.path.join(d, "service-scale.svg"))
        if any("connect_us" in r for r in rows):
            bars("TCP connect p50 through the VIP (lower is better)", [f"{n:,} services" for n in ns], dps,
                 [[(val(dp, n, "connect_us") or {}).get("p50") for n in ns] for dp in dps], "µs",
                 os.path.join(d, "connect-latency.svg"))
    lat = newest(d, "latency")
    if lat:
        qs = ["p50", "p90", "p99", "p99_9"]
        bars("UDP round trip through the appliance (lower is better)", qs,
             [r["label"] for r in lat["results"]],
             [[r["rtt_us"][q] for q in qs] for r in lat["results"]], "µs",
             os.path.join(d, "latency.svg"))
    # the newest full sweep (a run over a few offered loads only, as for the CPU figures, is
    # not a curve)
    fr = newest(d, "forward-rate", lambda r: r.get("sluiced", {}).get("engine") == "live"
                and str(r.get("frame_size")) == "64"
                and len(r.get("sluiced", {}).get("sweep", [])) >= 4)
    if fr and "sweep" in fr.get("sluiced", {}):
        offered = [p["offered_pps"] for p in fr["kernel_forwarding"]["sweep"]]
        keys = [k for k in ("kernel_forwarding", "kernel_xdp_forward", "bare_afxdp_forward", "sluiced") if k in fr]
        bars("Forwarded packets/s by offered load (64 B UDP, live generator)", [f"{o:,}" for o in offered],
             [{"kernel_forwarding": "kernel", "kernel_xdp_forward": "kernel XDP forward",
               "bare_afxdp_forward": "bare AF_XDP forward"}.get(k, k) for k in keys],
             [[p["forwarded_pps"] for p in fr[k]["sweep"]] for k in keys],
             "packets/s", os.path.join(d, "forward-rate.svg"))


if __name__ == "__main__":
    main()
