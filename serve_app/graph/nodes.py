"""The nodes of a pipeline graph (``serve_app.graph.spec``): model nodes, combinators,
switches, the tensor references they read, and ``PipelineGraph``, what the structure
checks need of a pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from serve_app.schema_base import StrictModel, validate_model_name

REQUEST = "request"
"""Source name of the pipeline's own inputs in a tensor reference."""
PARAMETERS = "parameters"
"""Prefix of a switch ``source`` that reads a request parameter: ``parameters.<key>``."""
RESERVED_NODE_NAMES = frozenset({REQUEST, PARAMETERS})
SWITCH_OUTPUT = "branch"
"""The switch node's one output: a BYTES tensor naming the chosen target (empty when
none), of shape [1], or one per row with ``reduce: per_row``."""
COMBINE_OUTPUT = "output"
"""Output name of ``concat`` and ``mean`` combine nodes."""
ARGMAX_OUTPUTS = ("label", "confidence")
"""Outputs of an ``argmax`` combine node: the winning label per row and its score."""


def split_ref(ref: str) -> tuple[str, str]:
    """``"embed.embedding"`` -> ``("embed", "embedding")``; ``ValueError`` if malformed."""
    source, sep, tensor = ref.partition(".")
    if not sep or not source or not tensor:
        raise ValueError(f"tensor reference {ref!r} must look like '<node>.<tensor>'")
    return source, tensor


class PipelineInput(StrictModel):
    """A tensor the pipeline takes from the request."""

    name: str = Field(description="Input name clients send (OIP ``inputs[].name``).")
    datatype: str = Field(description="OIP datatype, e.g. BYTES or FP32.")
    shape: list[int] = Field(description="Shape with -1 for variable dimensions.")


class _NodeBase(StrictModel):
    name: str = Field(description="Node name, unique in the pipeline; names errors and metrics.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        validate_model_name(v)
        if v in RESERVED_NODE_NAMES:
            raise ValueError(f"node name {v!r} is reserved")
        return v


class ModelNode(_NodeBase):
    """Run a served model. The node calls the model's own deployment (one deployment per
    model, shared with its HTTP route), so the node batches and autoscales with it."""

    kind: Literal["model"] = Field("model", description="Node kind (the default).")
    model: str = Field(description="Name of a model in ``AppConfig.models``.")
    version: Literal["latest"] | int | None = Field(
        None,
        description=(
            "Version policy the node expects; must equal the model's configured version "
            "(one deployment per model). None: whatever the model serves."
        ),
    )
    inputs: dict[str, str] = Field(
        min_length=1,
        description="Model input name -> tensor reference ('request.text', 'embed.embedding').",
    )
    optional: bool = Field(
        False,
        description=(
            "A failure of this node degrades the answer (its outputs are omitted and "
            "named in the response parameters) instead of failing the request."
        ),
    )
    placement: Literal["separate", "fused"] = Field(
        "separate",
        description=(
            "separate: the node calls the model's own deployment (one hop per call; the "
            "model batches, scales and rolls out on its own). fused: the node runs inside "
            "the replica of the one model node it reads from (its host), on the host's "
            "outputs for the same rows right after the host's forward, and comes back in "
            "the host's answer: no hop, no process of its own. A fused node gives up "
            "independent replicas, autoscaling and rollout (it scales, restarts and "
            "changes version with its host's deployment), and a gated fused node is "
            "computed for every call of its host and dropped when not chosen; meant for "
            "small heads. Its model is still resolved, sha256-verified and type-checked "
            "like any model, and reports its own batch metrics."
        ),
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Longest wait for this node's answer, from the moment it is called (for a "
            "chained node that includes its upstream's time). Past it the call is "
            "cancelled: an optional node degrades the answer, a required one fails the "
            "request with 504 naming the node. None: no deadline of its own (the HTTP "
            "request timeout still applies)."
        ),
    )

    @model_validator(mode="after")
    def _fused_has_no_deadline(self) -> ModelNode:
        if self.placement == "fused" and self.timeout_s is not None:
            raise ValueError(
                f"node {self.name!r}: a fused node runs inside its host's call and has no "
                "deadline of its own; set timeout_s on the host node"
            )
        return self

    @property
    def fused(self) -> bool:
        """Whether the node runs inside its host's replica (``placement: fused``)."""
        return self.placement == "fused"


class CombineNode(_NodeBase):
    """Combine tensors of other nodes without a model."""

    kind: Literal["combine"] = Field(description="Node kind.")
    mode: Literal["concat", "mean", "dict", "argmax"] = Field(
        description=(
            "concat: along the last axis (output 'output'); mean: element-wise average of "
            "same-shaped tensors (output 'output'); dict: each input becomes an output "
            "of the same name; argmax: of one tensor of scores per row, the label of the "
            "highest (outputs 'label' and 'confidence'). A dict omits inputs whose node "
            "was skipped or degraded; concat, argmax and mean need all of them (else the "
            "node is skipped), unless a mean is ``partial``."
        )
    )
    inputs: dict[str, str] = Field(
        min_length=1, description="Name -> tensor reference (names are the dict outputs)."
    )
    partial: bool = Field(
        False,
        description=(
            "mean only: average the inputs that are present (a skipped or degraded "
            "branch is left out); skipped only when none is."
        ),
    )
    labels: list[str] | None = Field(
        None,
        description="argmax only: the label of each position along the last axis.",
    )

    @model_validator(mode="after")
    def _mode_options(self) -> CombineNode:
        if self.partial and self.mode != "mean":
            raise ValueError(f"node {self.name!r}: partial applies to mode mean only")
        if (self.labels is not None) != (self.mode == "argmax"):
            raise ValueError(f"node {self.name!r}: labels go with mode argmax, and only there")
        if self.mode == "argmax" and len(self.inputs) != 1:
            raise ValueError(f"node {self.name!r}: argmax reads one tensor of scores")
        if self.labels is not None and (
            not self.labels or len(set(self.labels)) != len(self.labels)
        ):
            raise ValueError(f"node {self.name!r}: labels must be distinct and not empty")
        return self


class SwitchCase(StrictModel):
    """One rule of a switch: the first rule that matches picks its target."""

    below: float | None = Field(None, description="Matches when the score is < this.")
    at_least: float | None = Field(None, description="Matches when the score is >= this.")
    equals: bool | str | float | None = Field(
        None,
        description=(
            "Matches when the value equals this: a boolean (a BOOL tensor or a JSON "
            "true/false parameter), a string (BYTES or a string parameter) or a number."
        ),
    )
    to: str = Field(description="Node to run when the rule matches.")

    @model_validator(mode="after")
    def _one_condition(self) -> SwitchCase:
        given = [k for k in ("below", "at_least", "equals") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a switch case needs exactly one of below/at_least/equals: {given}")
        return self


class SwitchNode(_NodeBase):
    """Choose which nodes run next. Its targets are gated: they run only when chosen, and
    anything that needs a skipped node's outputs is skipped too."""

    kind: Literal["switch"] = Field(description="Node kind.")
    source: str = Field(
        description=(
            "What decides: a tensor reference ('topic.confidence', 'request.lang') or "
            "'parameters.<key>' (a request parameter)."
        )
    )
    reduce: Literal["min", "max", "mean", "first", "per_row"] = Field(
        "min",
        description=(
            "How a tensor with several elements (e.g. one score per row) becomes one "
            "value: min sends a request to a low-score branch if any row is low. "
            "per_row: each row goes to the target its own value picks (the source holds "
            "one value per row): a target model node runs on its rows only, and what "
            "reads it gets those rows (a partial mean places them back by row; a pipeline "
            "output names them in parameters.rows)."
        ),
    )
    cases: list[SwitchCase] = Field(min_length=1, description="Rules, tried in order.")
    default: str | None = Field(None, description="Target when no rule matches (None: none).")

    @model_validator(mode="after")
    def _per_row_reads_a_tensor(self) -> SwitchNode:
        if self.reduce == "per_row" and self.source.startswith(PARAMETERS + "."):
            raise ValueError(
                f"switch {self.name!r}: reduce: per_row needs a tensor with one value per "
                f"row; {self.source!r} is one value per request"
            )
        return self

    @property
    def per_row(self) -> bool:
        """Whether each row is routed on its own (``reduce: per_row``)."""
        return self.reduce == "per_row"

    @property
    def targets(self) -> list[str]:
        """Every node this switch may choose (in declaration order, no repeats)."""
        names = [c.to for c in self.cases] + ([self.default] if self.default else [])
        return list(dict.fromkeys(names))


def _node_kind(value: Any) -> str:
    """``kind`` of a node; a node without one is a model node."""
    if isinstance(value, dict):
        return str(value.get("kind", "model"))
    return str(getattr(value, "kind", "model"))


Node = Annotated[
    Annotated[ModelNode, Tag("model")]
    | Annotated[CombineNode, Tag("combine")]
    | Annotated[SwitchNode, Tag("switch")],
    Discriminator(_node_kind),
]


AnyNode = ModelNode | CombineNode | SwitchNode


class PipelineGraph(Protocol):
    """What the structure checks read of a pipeline (``PipelineConfig`` is one)."""

    @property
    def name(self) -> str:
        """Pipeline name, for messages."""
        ...

    @property
    def inputs(self) -> Sequence[PipelineInput]:
        """Declared request inputs."""
        ...

    @property
    def nodes(self) -> Sequence[AnyNode]:
        """The graph's nodes."""
        ...

    @property
    def outputs(self) -> Mapping[str, str]:
        """Response output name -> tensor reference."""
        ...
