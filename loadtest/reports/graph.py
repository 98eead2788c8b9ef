"""The graph benchmark's derived numbers (per-hop cost) and its Markdown report."""

from __future__ import annotations

from typing import Any

CHAIN = ("chain-a", "chain-b", "chain-c")
HOP_PATHS = (
    "graph_chain3",
    "graph_chain3_fused",
    "graph_chain3_inline",
    "graph_chain1",
    "client_chain",
    "direct",
)
"""``graph_chain3_fused``: the same chain with b and c fused into a's replica (one hop);
``graph_chain3_inline``: that, with ``router: host`` (no hop)."""


def derive_hops(points: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """The per-hop figures of the module docstring, from the c=1 points."""
    L = {p: points[f"{p}_c1"]["p50_ms"] for p in HOP_PATHS}
    nodes = points["graph_chain3_c1"]["nodes"]
    C = {n: nodes[n]["compute_per_row_ms"] for n in CHAIN}
    w = wait_s * 1e3
    bc = C["chain-b"] + C["chain-c"]
    per_call = (L["graph_chain3"] - L["direct"] - bc - 2 * w) / 3
    return {
        "p50_ms_c1": L,
        "compute_per_request_ms_c1": C,
        "node_compute_sum_ms_c1": round(sum(C.values()), 4),
        "batch_wait_ms": w,
        "hop_single_ms": round(L["graph_chain1"] - L["direct"], 3),
        "hop_per_call_ms": round(per_call, 3),
        "hop_per_call_incl_wait_ms": round((L["graph_chain3"] - L["direct"] - bc) / 3, 3),
        "hop_chained_ms": round((L["graph_chain3"] - L["graph_chain1"] - bc - 2 * w) / 2, 3),
        "target_hop_ms": 2.0,
        "meets_target": per_call <= 2.0,
        "client_chain_over_graph_p50": round(L["client_chain"] / L["graph_chain3"], 3),
        "client_chain_minus_graph_p50_ms": round(L["client_chain"] - L["graph_chain3"], 3),
        "fused": _against_client_chain(points, "graph_chain3_fused"),
        "inline": _against_client_chain(points, "graph_chain3_inline"),
    }


def _against_client_chain(points: dict[str, Any], path: str) -> dict[str, float]:
    """``path``'s req/s over the client-side chain's at c=1 and c=16, and its c=1 p50."""
    p50, client_p50 = points[f"{path}_c1"]["p50_ms"], points["client_chain_c1"]["p50_ms"]
    return {
        f"over_client_chain_rps_c{c}": round(
            points[f"{path}_c{c}"]["rps"] / points[f"client_chain_c{c}"]["rps"], 3
        )
        for c in (1, 16)
    } | {"p50_ms_c1": p50, "minus_client_chain_p50_ms_c1": round(p50 - client_p50, 3)}


def render_md(results: dict[str, Any]) -> str:
    """Markdown summary: the tables, the formulas with their values, date and machine."""
    m = results["machine"]
    lines = [
        f"# Graph cost ({m['date']}, {m['cpus']} CPUs, {m['cpu_model']}, Ray {m['ray']}, "
        f"torch {m['torch']})",
        "",
        f"`python -m loadtest.bench.graph{' --quick' if results['quick'] else ''}`, started "
        f"{results['started']}; serve_app sources sha256 {results['serve_app_sha256_start']}"
        + (
            ""
            if results["serve_app_sha256_start"] == results["serve_app_sha256_end"]
            else f" (changed during the run, end {results['serve_app_sha256_end']})"
        )
        + f"; load average at start {results['loadavg_start'][0]:.2f}, at end "
        f"{results['loadavg_end'][0]:.2f}; raw numbers in `graph.json`.",
        "",
    ]
    hops = results["hops"]
    if "error" in hops:
        lines += [f"Part 1 (hops) failed: {hops['error']}", ""]
    else:
        d, bare = hops["derived"], hops["bare_handle_call"]
        lines += [
            f"## Part 1: per-hop cost (chain of 3 MLPs 384->[384]->384, batch wait "
            f"{d['batch_wait_ms']} ms, {hops['duration_s']} s per point, Python client)",
            "",
            "| path | c | req/s | p50 ms | p99 ms | errors | a / b / c compute per request ms |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key, p in hops["points"].items():
            comp = " / ".join(
                f"{v['compute_per_row_ms']}" if v["rows"] else "-" for v in p["nodes"].values()
            )
            lines.append(
                f"| {key.rsplit('_c', 1)[0]} | {p['concurrency']} | {p['rps']} | {p['p50_ms']} "
                f"| {p['p99_ms']} | {p['errors']} | {comp} |"
            )
        L, C = d["p50_ms_c1"], d["compute_per_request_ms_c1"]
        lines += [
            "",
            "A hop is one DeploymentHandle call (chain3 makes 3, chain1 makes 1, direct 0). "
            "At c=1, L = p50, C = forward time per request of a node during graph_chain3 "
            f"(a {C['chain-a']}, b {C['chain-b']}, c {C['chain-c']} ms; sum "
            f"{d['node_compute_sum_ms_c1']} ms), w = batch wait ({d['batch_wait_ms']} ms, "
            "waited in full by a lone request):",
            "",
            f"- hop_single = L(chain1) - L(direct) = {L['graph_chain1']} - {L['direct']} = "
            f"**{d['hop_single_ms']} ms**",
            f"- hop_per_call = (L(chain3) - L(direct) - C_b - C_c - 2w) / 3 = "
            f"**{d['hop_per_call_ms']} ms** (target <= {d['target_hop_ms']} ms: "
            f"{'met' if d['meets_target'] else 'NOT met'})",
            f"- hop_per_call_incl_wait = (L(chain3) - L(direct) - C_b - C_c) / 3 = "
            f"{d['hop_per_call_incl_wait_ms']} ms",
            f"- hop_chained = (L(chain3) - L(chain1) - C_b - C_c - 2w) / 2 = "
            f"{d['hop_chained_ms']} ms",
            f"- client-side chain (3 HTTP calls) vs graph, p50 at c=1: "
            f"{L['client_chain']} vs {L['graph_chain3']} ms "
            f"(x{d['client_chain_over_graph_p50']}, {d['client_chain_minus_graph_p50_ms']:+} ms)",
            f"- cross-check, a bare handle call from the driver to chain-a (`metadata`: no "
            f"batcher, no forward), p50: by reference {bare['by_reference_p50_ms']} ms, "
            f"gRPC transport (`_by_reference=False`) {bare['grpc_p50_ms']} ms",
            f"- graph and client-side chain agree: max |difference| of the outputs "
            f"{hops['graph_vs_client_chain_max_abs_diff']:.2e}"
            + (
                f" (fused chain: {hops['fused_vs_client_chain_max_abs_diff']:.2e})"
                if "fused_vs_client_chain_max_abs_diff" in hops
                else ""
            ),
            *(
                f"- {label} vs the client-side chain: "
                f"**{d[key]['over_client_chain_rps_c16']}x** req/s at c=16, "
                f"{d[key]['over_client_chain_rps_c1']}x at c=1; p50 at c=1 "
                f"{d[key]['p50_ms_c1']} vs {L['client_chain']} ms "
                f"({d[key]['minus_client_chain_p50_ms_c1']:+} ms)"
                for key, label in (
                    ("fused", "b and c fused into a (`graph_chain3_fused`, one hop)"),
                    ("inline", "the same with `router: host` (`graph_chain3_inline`, no hop)"),
                )
            ),
            "",
        ]
    demo = results["demo"]
    if "error" in demo:
        lines += [f"Part 2 (demo) failed: {demo['error']}", ""]
    else:
        lines += [
            f"## Part 2: demo pipeline throughput (configs/app.yaml, wrk -t1 c=64, "
            f"{demo['duration_s']} s, one ~12-word ticket per request)",
            "",
            "| route | req/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, r in demo["loads"].items():
            lines.append(
                f"| /v2/models/{key.rsplit('_c', 1)[0]}/infer | {r['rps']} | "
                f"{r.get('p50_ms')} | {r.get('p99_ms')} | {r['errors']} |"
            )
        route = demo["sample_outputs"].get("route")
        lines += [
            "",
            f"triage / minilm req/s = **{demo['triage_over_minilm_rps']}**. "
            f"The ticket's route branch: {route} (second opinion "
            f"{'runs' if route and route[0] else 'does not run'}).",
            "",
        ]
    return "\n".join(lines)
