"""A pipeline as ``AppConfig`` serves it: the graph (``serve_app.graph.spec``) plus how
its router scales, which is serving, not graph, so it is declared here."""

from __future__ import annotations

from pydantic import Field, model_validator

from serve_app.config.model import AutoscalingConfig
from serve_app.graph.spec import PipelineConfig


class ServedPipelineConfig(PipelineConfig):
    """``PipelineConfig`` with its router's autoscaling."""

    autoscaling: AutoscalingConfig | None = Field(
        None,
        description=(
            "Serve autoscaling_config of the pipeline's router (it decodes each request "
            "and awaits the nodes: ~3.6 ms of CPU per request measured on the demo, so one "
            "router saturates a core near 280 req/s). None: num_replicas routers, fixed."
        ),
    )

    @model_validator(mode="after")
    def _one_way_to_size(self) -> ServedPipelineConfig:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                f"pipeline {self.name!r}: set num_replicas or autoscaling for its router, not both"
            )
        return self
