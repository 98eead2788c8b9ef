"""How fused nodes travel in their host's answer (``placement: fused``). Pure functions.

A host model node's call names the fused nodes to run (``FusedCall``); the host's
replica runs them on its own outputs for the same rows and returns one dict: the host's
outputs under their own names, each fused node's outputs as ``"<node>/<tensor>"``, and a
fused node that failed as ``"<node>!"`` (one ``"<status> <message>"`` per row, so the
answer still splits by rows when calls are coalesced). Node names cannot contain ``/``
or ``!`` (``validate_model_name``), so the keys do not collide with each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.graph.nodes import split_ref
from serve_app.graph.result import Classifier, Tensors


@dataclass(frozen=True)
class FusedCall:
    """The fused nodes a host call runs after its forward."""

    pipeline: str
    """Pipeline that declares them (node names are unique per pipeline)."""
    nodes: tuple[str, ...]
    """Fused node names, each after the nodes it reads."""


def output_key(node: str, tensor: str) -> str:
    """Key of fused ``node``'s output ``tensor`` in the host's answer."""
    return f"{node}/{tensor}"


def error_key(node: str) -> str:
    """Key of fused ``node``'s failure in the host's answer."""
    return f"{node}!"


def error_rows(status: int, message: str, rows: int) -> np.ndarray:
    """A failure as a BYTES-like column with one entry per row."""
    column = np.empty(rows, dtype=object)
    column[:] = f"{status} {message}"
    return column


def node_answer(answer: Tensors, node: str) -> Tensors | tuple[int, str]:
    """Fused ``node``'s outputs out of its host's answer, or its ``(status, message)``.

    Raises:
        KeyError: the answer has neither (the host did not run the node).
    """
    failure = answer.get(error_key(node))
    if failure is not None:
        text = str(failure[0]) if len(failure) else "500 fused node failed"
        status, _, message = text.partition(" ")
        return int(status), message
    prefix = f"{node}/"
    outputs = {k[len(prefix) :]: v for k, v in answer.items() if k.startswith(prefix)}
    if not outputs:
        raise KeyError(f"the host's answer has no outputs of fused node {node!r}")
    return outputs


@dataclass(frozen=True)
class FusedStep:
    """One fused node as its host runs it."""

    node: str
    """Node name."""
    inputs: Mapping[str, str]
    """Model input -> tensor reference (``"<host or fused node>.<tensor>"``)."""


RunStep = Callable[[FusedStep, Tensors], Tensors]
"""Runs one fused node's model on its inputs (rows first); raises on failure."""


def run_fused(
    steps: Sequence[FusedStep],
    host: str,
    host_outputs: Tensors,
    run_step: RunStep,
    classify: Classifier,
) -> Tensors:
    """Run ``steps`` in order on ``host``'s outputs; their outputs and failures keyed as
    the module says. A step whose upstream failed is left out (the router sees that
    upstream's failure); a failure of one step never stops the others.
    """
    rows = len(next(iter(host_outputs.values()))) if host_outputs else 0
    values: dict[str, Tensors] = {host: host_outputs}
    answer: Tensors = {}
    for step in steps:
        refs = {inp: split_ref(ref) for inp, ref in step.inputs.items()}
        if any(source not in values for source, _ in refs.values()):
            continue
        try:
            outputs = run_step(step, {inp: values[s][t] for inp, (s, t) in refs.items()})
        except Exception as e:  # this node's own failure, reported with its status
            status, message = classify(e)
            answer[error_key(step.node)] = error_rows(status, message, rows)
            continue
        values[step.node] = outputs
        answer.update({output_key(step.node, k): v for k, v in outputs.items()})
    return answer
