"""The report of ``loadtest.bench.multiplex``: results as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from loadtest.harness.machine import machine_info, machine_line


def write(a: argparse.Namespace, results: dict[str, Any]) -> None:
    """Results as JSON and Markdown in ``a.out`` (written before Ray stops)."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "settings": vars(a),
        "machine": machine_info(),
        "loadavg_end": os.getloadavg(),
        **results,
    }
    (out / "multiplex.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "multiplex.md").write_text(render_md(doc))


def render_md(d: dict[str, Any]) -> str:
    """A short report of one run."""
    s, m = d["settings"], d["machine"]
    lines = [
        f"# Multiplexed family vs one deployment per tenant ({m['date']})",
        "",
        f"{machine_line(m, 'torch')} HAProxy ingress (balance "
        f"{s.get('haproxy_balance') or 'leastconn'}), 127.0.0.1. {s['tenants']} tenants "
        f"(MLP 384->128->8, 200 KB each), {s['replicas']} replicas x {s['max_models']} "
        "tenants (LRU). Raw numbers: multiplex.json.",
        "",
    ]
    if "cold_load" in d:
        c = d["cold_load"]
        lines += [
            "## Cold load",
            "",
            f"{c['tenants']} never-loaded tenants, by OIP name, sequential: cold request p50 "
            f"{c['cold_request']['p50_ms']} ms (p99 {c['cold_request']['p99_ms']} ms), the "
            f"next request to the same tenant p50 {c['warm_request']['p50_ms']} ms. Inside "
            f"Ray's LRU the load (adapter + warm-up, after the sha256 check) took "
            f"{c['ray_load_latency_mean_ms']} ms on average ({c['ray_loads']:.0f} loads).",
            "",
        ]
    if "hop" in d:
        h = d["hop"]
        lines += [
            "## Address and hop cost (hot tenant, c=1)",
            "",
            "| path | p50 ms | p99 ms |",
            "|---|---|---|",
        ]
        for k in ("single_direct", "family_by_header", "family_by_name"):
            lines.append(f"| {k} | {h[k]['p50_ms']} | {h[k]['p99_ms']} |")
        lines += [
            "",
            f"The OIP-name address adds {h['server_hop_p50_ms']} ms at p50 (server app + "
            "handle hop).",
            "",
        ]
    if "zipf" in d:
        lines += [
            f"## Zipf mix (s={s['zipf_s']}, {s['rate']} req/s open loop, {s['duration_s']} s "
            f"after {s['warmup_s']} s warm-up)",
            "",
            "| address | ok/sent | tenants seen | hit rate (Ray counters) | loads | evictions "
            "| sim. affinity | sim. random replica | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for mode, z in d["zipf"].items():
            c = z["counters"]
            lines.append(
                f"| {mode} | {z['ok']}/{z['requests']} | {z['distinct_tenants']} | "
                f"{c['hit_rate']:.3f} | {c['loads']:.0f} | {c['evictions']:.0f} | "
                f"{z['simulated_hit_rate_affinity']} | {z['simulated_hit_rate_random_replica']} | "
                f"{z['latency']['p50_ms']} | {z['latency']['p99_ms']} |"
            )
        lines.append("")
    if "memory_comparison" in d:
        mc = d["memory_comparison"]
        lines += [
            "## Memory",
            "",
            f"Family: {mc['family_replicas']} replicas, RSS {mc['family_total_rss_mib']} MiB, "
            f"PSS {mc['family_total_pss_mib']} MiB, USS {mc['family_total_uss_mib']} MiB in "
            f"total, serving all {s['tenants']} tenants.",
            "",
            f"One single-tenant deployment's replica (measured): RSS "
            f"{mc['single_replica_rss_mib']} MiB, PSS {mc['single_replica_pss_mib']} MiB, USS "
            f"{mc['single_replica_uss_mib']} MiB. {s['tenants']} such deployments "
            f"(extrapolated from that one measurement, not run): {s['tenants']} replicas, "
            f"~{mc['extrapolated_uss_gib']} GiB unique (USS) to ~{mc['extrapolated_rss_gib']} "
            f"GiB (RSS) of memory, and {s['tenants']} x num_cpus of logical CPUs.",
            "",
        ]
    return "\n".join(lines)
