"""A staged (pipeline-parallel) model as a graph: a chain of stage nodes."""

from __future__ import annotations

from serve_app.graph.nodes import ModelNode, PipelineInput
from serve_app.graph.spec import PipelineConfig


def stage_node(index: int) -> str:
    """Node (and handle) name of stage ``index``."""
    return f"stage-{index}"


def staged_pipeline(name: str, num_stages: int) -> PipelineConfig:
    """The chain ``text -> stage-0 -> ... -> stage-(n-1) -> embedding``.

    Every stage after the first reads the previous stage's ``hidden_states`` and
    ``attention_mask``, so each call is chained to the previous one without the router
    waiting in between.
    """
    nodes = [ModelNode(name=stage_node(0), model=stage_node(0), inputs={"text": "request.text"})]
    for i in range(1, num_stages):
        prev = stage_node(i - 1)
        nodes.append(
            ModelNode(
                name=stage_node(i),
                model=stage_node(i),
                inputs={
                    "hidden_states": f"{prev}.hidden_states",
                    "attention_mask": f"{prev}.attention_mask",
                },
            )
        )
    return PipelineConfig(
        name=name,
        inputs=[PipelineInput(name="text", datatype="BYTES", shape=[-1])],
        nodes=nodes,
        outputs={"embedding": f"{stage_node(num_stages - 1)}.embedding"},
        # Hidden states of a full batch reach megabytes: each stage fetches its
        # upstream's result from the object store, the router never touches them.
        transport="object_store",
    )
