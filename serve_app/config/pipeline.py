"""A pipeline as ``AppConfig`` serves it: the graph (``serve_app.graph.spec``) plus how
its router scales, which is serving, not graph, so it is declared here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_app.config.model import AutoscalingConfig
from serve_app.graph.nodes import ModelNode
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.structure import model_nodes


class ServedPipelineConfig(PipelineConfig):
    """``PipelineConfig`` with where its router runs and how it scales."""

    router: Literal["separate", "host"] = Field(
        "separate",
        description=(
            "separate: a PipelineRouter deployment of its own decodes each request and "
            "calls the models' deployments through handles (one hop per call). host: the "
            "pipeline's route is served by replicas that load its one separate model node "
            "(the host) with every other model node fused into it and run the graph "
            "in-process: one HTTP hop, like the model's own route. Those replicas are the "
            "pipeline's own, sized, batched and scaled by the host model's settings "
            "(replicas, autoscaling, resources, batching); the model's own route keeps "
            "its own replicas (the weights are loaded by both)."
        ),
    )

    autoscaling: AutoscalingConfig | None = Field(
        None,
        description=(
            "Serve autoscaling_config of the pipeline's router (it decodes each request "
            "and awaits the nodes: ~3.6 ms of CPU per request measured on the demo, so one "
            "router saturates a core near 280 req/s). None: num_replicas routers, fixed."
        ),
    )

    handle_loop: Literal["separate", "same"] = Field(
        "separate",
        description=(
            "Where the router's DeploymentHandles route their calls. separate: Serve's "
            "default, a router event loop in a thread of its own (each call crosses "
            "threads twice). same: the replica's own event loop, where the graph runs "
            "(set on these handles only, not process-wide, so drivers keep the default)."
        ),
    )

    @property
    def separate_nodes(self) -> list[ModelNode]:
        """Model nodes that call their model's deployment (not fused into another)."""
        return [n for n in model_nodes(self) if not n.fused]

    @property
    def host_model(self) -> str:
        """``router: host``: the model its replicas load (its one separate node's)."""
        (host,) = self.separate_nodes
        return host.model

    @model_validator(mode="after")
    def _host_router_has_one_host(self) -> ServedPipelineConfig:
        if self.router != "host":
            return self
        separate = [n.name for n in self.separate_nodes]
        if len(separate) != 1:
            raise ValueError(
                f"pipeline {self.name!r}: router: host needs exactly one separate model node "
                f"(the host) with every other model node fused into it; separate: {separate}"
            )
        sizing = {"num_replicas", "autoscaling", "max_ongoing_requests"} & self.model_fields_set
        if sizing:
            raise ValueError(
                f"pipeline {self.name!r}: with router: host the replicas are sized by the "
                f"host model's settings; remove {sorted(sizing)}"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_size(self) -> ServedPipelineConfig:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                f"pipeline {self.name!r}: set num_replicas or autoscaling for its router, not both"
            )
        return self
