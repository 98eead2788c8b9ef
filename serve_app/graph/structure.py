"""Structure of a pipeline graph: references, edges, order, gates. Pure functions.

``check_structure`` raises ``ValueError`` (pydantic turns it into a config error) with
a message that names the pipeline and the node at fault.
"""

from __future__ import annotations

from collections.abc import Iterator

from serve_app.graph.nodes import (
    ARGMAX_OUTPUTS,
    COMBINE_OUTPUT,
    PARAMETERS,
    REQUEST,
    SWITCH_OUTPUT,
    AnyNode,
    CombineNode,
    ModelNode,
    PipelineGraph,
    SwitchNode,
    split_ref,
)


def node_refs(node: AnyNode) -> list[str]:
    """Tensor references a node reads (a switch on a request parameter reads none)."""
    if isinstance(node, SwitchNode):
        return [] if node.source.startswith(PARAMETERS + ".") else [node.source]
    return list(node.inputs.values())


def dependencies(node: AnyNode) -> list[str]:
    """Names of the nodes whose outputs ``node`` reads, in first-use order."""
    sources = [split_ref(r)[0] for r in node_refs(node)]
    return list(dict.fromkeys(s for s in sources if s != REQUEST))


def gates(pipeline: PipelineGraph) -> dict[str, str]:
    """Node -> the switch that gates it (runs it only when chosen)."""
    out: dict[str, str] = {}
    for node in pipeline.nodes:
        if isinstance(node, SwitchNode):
            for target in node.targets:
                out[target] = node.name
    return out


def edges(pipeline: PipelineGraph) -> list[tuple[str, str]]:
    """``(from, to)`` pairs: data edges, then switch -> target edges."""
    data = [(dep, n.name) for n in pipeline.nodes for dep in dependencies(n)]
    control = [(switch, target) for target, switch in gates(pipeline).items()]
    return data + control


def fixed_outputs(node: AnyNode) -> set[str] | None:
    """Output names of a combinator (known from config); None for a model node."""
    if isinstance(node, SwitchNode):
        return {SWITCH_OUTPUT}
    if isinstance(node, CombineNode):
        if node.mode == "argmax":
            return set(ARGMAX_OUTPUTS)
        return set(node.inputs) if node.mode == "dict" else {COMBINE_OUTPUT}
    return None


def topological_order(pipeline: PipelineGraph) -> list[str]:
    """Node names so that every node comes after what it reads and what gates it.

    Raises:
        ValueError: the graph has a cycle (the message names the nodes on it).
    """
    preds: dict[str, set[str]] = {n.name: set() for n in pipeline.nodes}
    for src, dst in edges(pipeline):
        preds[dst].add(src)
    order: list[str] = []
    ready = [n.name for n in pipeline.nodes if not preds[n.name]]
    remaining = {k: set(v) for k, v in preds.items()}
    while ready:
        name = ready.pop(0)
        order.append(name)
        for other, p in remaining.items():
            if name in p:
                p.discard(name)
                if not p and other not in order and other not in ready:
                    ready.append(other)
    if len(order) != len(preds):
        cyclic = sorted(set(preds) - set(order))
        raise ValueError(f"pipeline {pipeline.name!r}: cycle through nodes {cyclic}")
    return order


def _check_refs(pipeline: PipelineGraph) -> None:
    names = {n.name for n in pipeline.nodes}
    inputs = {i.name for i in pipeline.inputs}
    by_name = {n.name: n for n in pipeline.nodes}

    def check(ref: str, where: str) -> None:
        try:
            source, tensor = split_ref(ref)
        except ValueError as e:
            raise ValueError(f"pipeline {pipeline.name!r}: {where}: {e}") from None
        if source == REQUEST:
            if tensor not in inputs:
                raise ValueError(
                    f"pipeline {pipeline.name!r}: {where} reads {ref!r}, but the pipeline "
                    f"declares no input {tensor!r} (inputs: {sorted(inputs)})"
                )
            return
        if source not in names:
            raise ValueError(
                f"pipeline {pipeline.name!r}: {where} reads {ref!r} from unknown node "
                f"{source!r} (nodes: {sorted(names)})"
            )
        known = fixed_outputs(by_name[source])
        if known is not None and tensor not in known:
            raise ValueError(
                f"pipeline {pipeline.name!r}: {where} reads {ref!r}, but node {source!r} "
                f"has outputs {sorted(known)}"
            )

    for node in pipeline.nodes:
        for ref in node_refs(node):
            check(ref, f"node {node.name!r}")
    for out, ref in pipeline.outputs.items():
        check(ref, f"output {out!r}")


def _reachable_from_outputs(pipeline: PipelineGraph) -> set[str]:
    by_name = {n.name: n for n in pipeline.nodes}
    gate_of = gates(pipeline)
    seen: set[str] = set()
    stack = [split_ref(r)[0] for r in pipeline.outputs.values()]
    while stack:
        name = stack.pop()
        if name == REQUEST or name in seen:
            continue
        seen.add(name)
        stack.extend(dependencies(by_name[name]))
        if name in gate_of:
            stack.append(gate_of[name])
    return seen


def check_structure(pipeline: PipelineGraph) -> None:
    """Validate names, references, switch targets, cycles, unused nodes, and that no
    required model node reads a node that may not run.

    Raises:
        ValueError: with a message naming the pipeline and the node.
    """
    names = [n.name for n in pipeline.nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"pipeline {pipeline.name!r}: duplicate node names {dupes}")
    input_names = [i.name for i in pipeline.inputs]
    if len(set(input_names)) != len(input_names):
        raise ValueError(f"pipeline {pipeline.name!r}: duplicate input names {input_names}")
    _check_refs(pipeline)
    gated: dict[str, str] = {}
    for node in pipeline.nodes:
        if not isinstance(node, SwitchNode):
            continue
        for target in node.targets:
            if target not in names:
                raise ValueError(
                    f"pipeline {pipeline.name!r}: switch {node.name!r} targets unknown node "
                    f"{target!r}"
                )
            if target == node.name:
                raise ValueError(f"pipeline {pipeline.name!r}: switch {node.name!r} targets itself")
            if target in gated:
                raise ValueError(
                    f"pipeline {pipeline.name!r}: node {target!r} is targeted by switches "
                    f"{gated[target]!r} and {node.name!r}; a node has one gate"
                )
            gated[target] = node.name
    _check_required_inputs(pipeline, topological_order(pipeline))
    fused_hosts(pipeline)
    _check_row_subsets(pipeline)
    unused = [n for n in names if n not in _reachable_from_outputs(pipeline)]
    if unused:
        raise ValueError(
            f"pipeline {pipeline.name!r}: nodes {unused} feed no pipeline output "
            "(dangling); remove them or use their outputs"
        )


def fused_hosts(pipeline: PipelineGraph) -> dict[str, str]:
    """Fused node -> its host: the separate model node whose replica runs it (a fused
    node reading another fused node has that node's host).

    Raises:
        ValueError: a fused node reads the request, several nodes, or a node that is not
            a model node (the message names it).
    """
    by_name = {n.name: n for n in pipeline.nodes}
    hosts: dict[str, str] = {}
    for name in topological_order(pipeline):
        node = by_name[name]
        if not isinstance(node, ModelNode) or not node.fused:
            continue
        sources = {split_ref(r)[0] for r in node.inputs.values()}
        upstream = by_name.get(next(iter(sources))) if len(sources) == 1 else None
        if not isinstance(upstream, ModelNode):
            raise ValueError(
                f"pipeline {pipeline.name!r}: fused node {node.name!r} must read only one "
                f"model node's outputs (it runs inside that node's replica); it reads "
                f"{sorted(sources)}"
            )
        hosts[name] = hosts.get(upstream.name, upstream.name)
    return hosts


def row_subsets(pipeline: PipelineGraph) -> dict[str, str]:
    """Node -> the ``per_row`` switch whose rows it answers for: the switch's targets and
    the nodes fused into them (they see only the rows routed to their host)."""
    by_name = {n.name: n for n in pipeline.nodes}
    subset: dict[str, str] = {}
    for target, switch in gates(pipeline).items():
        node = by_name[switch]
        if isinstance(node, SwitchNode) and node.per_row:
            subset[target] = switch
    for fused, host in fused_hosts(pipeline).items():
        if host in subset:
            subset[fused] = subset[host]
    return subset


def _check_row_subsets(pipeline: PipelineGraph) -> None:
    """What ``reduce: per_row`` can route and what may read the rows it routes."""
    by_name = {n.name: n for n in pipeline.nodes}
    subsets = row_subsets(pipeline)
    for name, switch in subsets.items():
        if not isinstance(by_name[name], ModelNode):
            raise ValueError(
                f"pipeline {pipeline.name!r}: switch {switch!r} routes rows (reduce: per_row) "
                f"to {name!r}, which is not a model node"
            )
    for node in pipeline.nodes:
        if node.name in subsets and isinstance(node, ModelNode) and node.fused:
            continue  # runs in its host on the host's rows
        read = [d for d in dependencies(node) if d in subsets]
        if read and not (isinstance(node, CombineNode) and node.mode == "mean" and node.partial):
            raise ValueError(
                f"pipeline {pipeline.name!r}: node {node.name!r} reads {read[0]!r}, which "
                f"answers only the rows switch {subsets[read[0]]!r} routes to it (reduce: "
                "per_row); only a mean with partial: true (or a pipeline output) can read it"
            )


def may_be_missing(pipeline: PipelineGraph, order: list[str]) -> dict[str, str]:
    """Node -> why it may produce nothing on some request (optional, gated by a switch,
    or reading such a node); nodes that always run are absent."""
    by_name = {n.name: n for n in pipeline.nodes}
    gate_of = gates(pipeline)
    why: dict[str, str] = {}
    for name in order:
        node = by_name[name]
        missing = [why[d] for d in dependencies(node) if d in why]
        if isinstance(node, ModelNode) and node.optional:
            why[name] = f"{name!r} is optional"
        elif name in gate_of:
            why[name] = f"{name!r} runs only when switch {gate_of[name]!r} chooses it"
        elif isinstance(node, CombineNode) and (node.mode == "dict" or node.partial):
            if missing and len(missing) == len(dependencies(node)):
                why[name] = missing[0]
        elif missing:
            why[name] = missing[0]
    return why


def _check_required_inputs(pipeline: PipelineGraph, order: list[str]) -> None:
    """A required model node must not read a node that may not run: it would be skipped
    silently, though nothing says it may be."""
    why = may_be_missing(pipeline, order)
    for node in model_nodes(pipeline):
        if node.optional:
            continue
        for dep in dependencies(node):
            if dep in why:
                raise ValueError(
                    f"pipeline {pipeline.name!r}: required node {node.name!r} reads {dep!r}, "
                    f"which may not run ({why[dep]}); make {node.name!r} optional "
                    "(skipped with it, named in the response) or read a node that always runs"
                )


def model_nodes(pipeline: PipelineGraph) -> Iterator[ModelNode]:
    """The pipeline's model nodes, in declaration order."""
    return (n for n in pipeline.nodes if isinstance(n, ModelNode))
