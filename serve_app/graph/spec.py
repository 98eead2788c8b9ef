"""Declaration of inference pipelines: a DAG of model nodes and built-in combinators.

A pipeline is declared in ``AppConfig.pipelines`` and served at
``/v2/models/<pipeline>`` like a model (Triton clients address ensembles as models).
Tensors are referenced as ``"<source>.<tensor>"`` where the source is ``request`` (a
declared pipeline input) or a node name. Node kinds:

- ``model``: a served model; ``inputs`` maps each model input to a reference. A model
  node fed from another node is a **sequence** step; several nodes reading the same
  tensor are a **fan-out** and run concurrently.
- ``combine``: ``concat`` (last axis), ``mean`` (element-wise) or ``dict`` (named
  outputs) of several tensors.
- ``switch``: picks which of its target nodes run, from a request parameter, an input
  value or a score compared with thresholds.

Only structure is checked here (names, references, cycles, switch targets, unused
nodes); ``serve_app.graph.typing`` checks datatypes and shapes against the models'
tensor specs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from serve_app.graph.nodes import CombineNode, ModelNode, Node, PipelineInput, SwitchNode
from serve_app.graph.structure import check_structure
from serve_app.schema_base import StrictModel, model_route_prefix, validate_model_name


class CoalesceConfig(StrictModel):
    """Coalescing in the router: concurrent requests' rows for one node share a call."""

    max_in_flight: int = Field(
        2,
        ge=1,
        description=(
            "Calls to one model a router keeps pending before requests wait to share the "
            "next one; more spreads load over the model's replicas, fewer coalesces more."
        ),
    )
    max_rows: int = Field(256, ge=1, description="Most rows in one coalesced call.")


class PipelineConfig(StrictModel):
    """A named inference graph, served at ``/v2/models/<name>``."""

    name: str = Field(description="Pipeline name: URL path segment, unique among models.")
    version: int = Field(1, ge=1, description="Reported as ``model_version`` in responses.")
    inputs: list[PipelineInput] = Field(min_length=1, description="What clients send.")
    nodes: list[Node] = Field(min_length=1, description="The graph's nodes.")
    outputs: dict[str, str] = Field(
        min_length=1, description="Response output name -> tensor reference."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one router replica handles at once (it mostly waits)."
    )
    num_replicas: int = Field(1, ge=1, description="Router replicas (the router is light).")
    transport: Literal["grpc", "object_store"] = Field(
        "grpc",
        description=(
            "How tensors travel between the router and model replicas. grpc: by value over "
            "Serve's replica gRPC channel (about half the CPU per hop of the object store, "
            "measured in loadtest/results/graph.md; messages up to 4 MiB). object_store: "
            "by reference through Ray's object store, a chained node fetching its upstream's "
            "result straight from that replica (for large tensors)."
        ),
    )
    coalesce: CoalesceConfig | None = Field(
        default_factory=CoalesceConfig,
        description=(
            "With the grpc transport, concurrent requests' rows for the same node travel "
            "in one call (a request's answer is its own slice; a bad request fails alone). "
            "None: one call per request per node."
        ),
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return validate_model_name(v)

    @property
    def route_prefix(self) -> str:
        """Where the pipeline answers its OIP routes."""
        return model_route_prefix(self.name)

    def node(self, name: str) -> ModelNode | CombineNode | SwitchNode:
        """The node called ``name`` (``KeyError`` if absent)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @model_validator(mode="after")
    def _structure(self) -> PipelineConfig:
        check_structure(self)
        return self
