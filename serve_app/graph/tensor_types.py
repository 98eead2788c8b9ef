"""Datatype and shape checking of a pipeline against its models' tensor specs.

Every edge is checked: a model input must receive the datatype it declares and a shape
of the same rank whose fixed dimensions agree (-1 matches anything). Combinators derive
their output specs from their inputs, so a mismatch anywhere downstream is found too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serve_app.errors import ConfigError
from serve_app.graph.nodes import (
    ARGMAX_OUTPUTS,
    COMBINE_OUTPUT,
    PARAMETERS,
    REQUEST,
    SWITCH_OUTPUT,
    CombineNode,
    ModelNode,
    SwitchNode,
    split_ref,
)
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.structure import topological_order
from serve_app.models.base import ModelSpecs, TensorSpec
from serve_app.protocol.oip import DATATYPES

NUMERIC = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)
FLOAT = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True)
class PipelineSpecs:
    """Specs of every tensor in a pipeline, keyed by reference."""

    tensors: dict[str, TensorSpec]
    outputs: tuple[TensorSpec, ...]


def shapes_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Same rank, and every dimension equal or variable (-1) on either side."""
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _fail(pipeline: PipelineConfig, node: str, message: str) -> ConfigError:
    return ConfigError(f"pipeline {pipeline.name!r} node {node!r}: {message}")


def _combine_spec(pipeline: PipelineConfig, node: CombineNode, got: list[TensorSpec]) -> TensorSpec:
    dtypes = sorted({s.datatype for s in got})
    if len(dtypes) != 1:
        raise _fail(pipeline, node.name, f"{node.mode} of mixed datatypes {dtypes}")
    dtype = dtypes[0]
    if dtype not in NUMERIC:
        raise _fail(pipeline, node.name, f"{node.mode} needs numeric tensors, got {dtype}")
    first = got[0].shape
    if node.mode == "mean":
        if dtype not in FLOAT:
            raise _fail(pipeline, node.name, f"mean needs floating-point tensors, got {dtype}")
        for s in got[1:]:
            if not shapes_compatible(first, s.shape):
                raise _fail(pipeline, node.name, f"mean of shapes {[list(x.shape) for x in got]}")
        return TensorSpec(COMBINE_OUTPUT, dtype, first)
    for s in got[1:]:
        if len(s.shape) != len(first) or not shapes_compatible(first[:-1], s.shape[:-1]):
            raise _fail(
                pipeline,
                node.name,
                f"concat of shapes {[list(x.shape) for x in got]} "
                "(all but the last axis must agree)",
            )
    lasts = [s.shape[-1] for s in got]
    last = -1 if -1 in lasts else sum(lasts)
    return TensorSpec(COMBINE_OUTPUT, dtype, (*first[:-1], last))


def _argmax_specs(
    pipeline: PipelineConfig, node: CombineNode, scores: TensorSpec
) -> tuple[TensorSpec, TensorSpec]:
    """``label`` (BYTES) and ``confidence`` of an argmax over ``scores``' last axis."""
    if scores.datatype not in FLOAT or not scores.shape:
        raise _fail(
            pipeline,
            node.name,
            f"argmax needs floating-point scores, got {scores.datatype} {list(scores.shape)}",
        )
    width = scores.shape[-1]
    n_labels = len(node.labels or [])
    if width not in (-1, n_labels):
        raise _fail(
            pipeline, node.name, f"argmax over {width} scores per row with {n_labels} labels"
        )
    rows = scores.shape[:-1]
    label, confidence = ARGMAX_OUTPUTS
    return TensorSpec(label, "BYTES", rows), TensorSpec(confidence, scores.datatype, rows)


GRPC_CALL_BYTES = 3 * 1024 * 1024
"""What one coalesced call may carry: 3/4 of Serve's 4 MiB replica gRPC message cap."""


def row_bytes(spec: TensorSpec) -> int | None:
    """Bytes of one row (first axis) of a tensor, when its datatype and every other
    dimension are fixed; else None."""
    dims = spec.shape[1:]
    dtype = DATATYPES.get(spec.datatype)
    if dtype is None or dtype.hasobject or any(d < 0 for d in dims):
        return None
    size = dtype.itemsize
    for d in dims:
        size *= d
    return size


def _check_message_size(
    pipeline: PipelineConfig, node: ModelNode, outputs: tuple[TensorSpec, ...]
) -> None:
    """A coalesced answer of ``max_rows`` rows must fit Serve's gRPC message cap."""
    if pipeline.transport != "grpc" or pipeline.coalesce is None:
        return
    sizes = [row_bytes(s) for s in outputs]
    if any(s is None for s in sizes):
        return  # a BYTES or variable-size output: bounded at run time only
    per_call = pipeline.coalesce.max_rows * sum(s for s in sizes if s is not None)
    if per_call > GRPC_CALL_BYTES:
        raise _fail(
            pipeline,
            node.name,
            f"model {node.model!r} answers {per_call / 2**20:.1f} MiB for "
            f"coalesce.max_rows={pipeline.coalesce.max_rows} rows, above the "
            f"{GRPC_CALL_BYTES / 2**20:.0f} MiB a gRPC call may carry (Serve caps a message "
            "at 4 MiB); lower coalesce.max_rows or use transport: object_store",
        )


def infer_specs(pipeline: PipelineConfig, models: Mapping[str, ModelSpecs]) -> PipelineSpecs:
    """Check every edge and return the specs of all tensors and of the outputs.

    Args:
        pipeline: A structurally valid pipeline.
        models: Specs of every model its nodes use.

    Raises:
        ConfigError: a missing or extra model input, or a datatype or shape mismatch;
            the message names the pipeline, the node and both specs.
    """
    tensors: dict[str, TensorSpec] = {
        f"{REQUEST}.{i.name}": TensorSpec(i.name, i.datatype, tuple(i.shape))
        for i in pipeline.inputs
    }
    for name in topological_order(pipeline):
        node = pipeline.node(name)
        if isinstance(node, ModelNode):
            specs = models.get(node.model)
            if specs is None:
                raise _fail(pipeline, name, f"no tensor specs for model {node.model!r}")
            declared = {s.name: s for s in specs.inputs}
            missing = sorted(set(declared) - set(node.inputs))
            extra = sorted(set(node.inputs) - set(declared))
            if missing or extra:
                raise _fail(
                    pipeline,
                    name,
                    f"model {node.model!r} takes inputs {sorted(declared)}; the node maps "
                    f"{sorted(node.inputs)} (missing {missing}, unknown {extra})",
                )
            for input_name, ref in node.inputs.items():
                want, got = declared[input_name], tensors.get(ref)
                if got is None:
                    outs = sorted(k for k in tensors if k.startswith(split_ref(ref)[0] + "."))
                    raise _fail(pipeline, name, f"reads {ref!r}, which does not exist ({outs})")
                if got.datatype != want.datatype or not shapes_compatible(got.shape, want.shape):
                    raise _fail(
                        pipeline,
                        name,
                        f"input {input_name!r} of model {node.model!r} is {want.datatype} "
                        f"{list(want.shape)}, but {ref!r} is {got.datatype} {list(got.shape)}",
                    )
            for s in specs.outputs:
                tensors[f"{name}.{s.name}"] = s
            _check_message_size(pipeline, node, specs.outputs)
        elif isinstance(node, CombineNode):
            parts: list[TensorSpec] = []
            for ref in node.inputs.values():
                if ref not in tensors:
                    raise _fail(pipeline, name, f"reads {ref!r}, which does not exist")
                parts.append(tensors[ref])
            if node.mode == "dict":
                for out, spec in zip(node.inputs, parts, strict=True):
                    tensors[f"{name}.{out}"] = TensorSpec(out, spec.datatype, spec.shape)
            elif node.mode == "argmax":
                for spec in _argmax_specs(pipeline, node, parts[0]):
                    tensors[f"{name}.{spec.name}"] = spec
            else:
                tensors[f"{name}.{COMBINE_OUTPUT}"] = _combine_spec(pipeline, node, parts)
        else:
            _check_switch(pipeline, node, tensors)
            rows = tensors[node.source].shape[:1] if node.per_row else (1,)
            tensors[f"{name}.{SWITCH_OUTPUT}"] = TensorSpec(SWITCH_OUTPUT, "BYTES", rows)
    outputs = []
    for out, ref in pipeline.outputs.items():
        if ref not in tensors:
            raise ConfigError(f"pipeline {pipeline.name!r} output {out!r}: {ref!r} does not exist")
        spec = tensors[ref]
        outputs.append(TensorSpec(out, spec.datatype, spec.shape))
    return PipelineSpecs(tensors=tensors, outputs=tuple(outputs))


def _check_switch(
    pipeline: PipelineConfig, node: SwitchNode, tensors: Mapping[str, TensorSpec]
) -> None:
    if node.source.startswith(PARAMETERS + "."):
        return
    spec = tensors.get(node.source)
    if spec is None:
        raise _fail(pipeline, node.name, f"switches on {node.source!r}, which does not exist")
    if node.per_row and len(spec.shape) != 1:
        raise _fail(
            pipeline,
            node.name,
            f"routes rows by {node.source!r} {list(spec.shape)}; reduce: per_row needs one "
            "value per row (a tensor of shape [-1])",
        )
    thresholds = any(c.below is not None or c.at_least is not None for c in node.cases)
    if thresholds and spec.datatype not in NUMERIC - {"BOOL"}:
        raise _fail(
            pipeline,
            node.name,
            f"compares {node.source!r} ({spec.datatype}) with a threshold; it must be numeric",
        )
    for case in node.cases:
        if case.equals is None:
            continue
        wants = _equals_datatypes(case.equals)
        if isinstance(case.equals, bool) and node.reduce == "mean":
            raise _fail(
                pipeline,
                node.name,
                f"compares the mean of {node.source!r} (a number) with {case.equals!r}; "
                "use reduce: min (every row), max (any row) or first",
            )
        if spec.datatype not in wants:
            raise _fail(
                pipeline,
                node.name,
                f"compares {node.source!r} ({spec.datatype}) with {case.equals!r}, which "
                f"only a {' or '.join(sorted(wants))} tensor can equal",
            )


def _equals_datatypes(expected: bool | str | float) -> frozenset[str]:
    """Datatypes whose values a switch case's ``equals`` can match."""
    if isinstance(expected, bool):
        return frozenset({"BOOL"})
    if isinstance(expected, str):
        return frozenset({"BYTES"})
    return NUMERIC - {"BOOL"}
