"""Configuration: the pydantic ``AppConfig`` that is the one source of truth for what is
served and how, and every part of it (models, pipelines' place in it, the HTTP and gRPC
ingress, lifecycle, tenants, the Kubernetes worker shape).

``app`` holds ``AppConfig`` and ``load_app_config``; ``model`` what one model is
configured with; ``pipeline`` how a pipeline's router is served; ``cluster``, ``grpc``,
``lifecycle`` the smaller parts; ``tenants`` the rules that keep multiplexed tenant
names unambiguous. Everything public is re-exported
here: ``serve_app.config.AppConfig`` is the path users write.

May import: ``schema_base``, ``errors``, ``constants``, ``protocol`` (request limits) and
``graph`` (pipeline declarations). Nothing that deploys or serves.
"""

from serve_app.config.app import (
    AppConfig,
    HttpConfig,
    LogConfig,
    RepositoryConfig,
    load_app_config,
)
from serve_app.config.cluster import ClusterConfig, WorkerPodConfig
from serve_app.config.grpc import GrpcConfig
from serve_app.config.jobs import ConsumerScaling, JobsConfig
from serve_app.config.lifecycle import CanaryConfig, MultiplexConfig, VersionPolicy
from serve_app.config.model import (
    AutoscalingConfig,
    BatchingConfig,
    ModelConfig,
    ResourcesConfig,
    StageConfig,
)
from serve_app.config.pipeline import ServedPipelineConfig
from serve_app.schema_base import MODEL_NAME_PATTERN, model_route_prefix, validate_model_name

__all__ = [
    "MODEL_NAME_PATTERN",
    "AppConfig",
    "AutoscalingConfig",
    "BatchingConfig",
    "CanaryConfig",
    "ClusterConfig",
    "ConsumerScaling",
    "GrpcConfig",
    "JobsConfig",
    "HttpConfig",
    "LogConfig",
    "ModelConfig",
    "MultiplexConfig",
    "RepositoryConfig",
    "ResourcesConfig",
    "ServedPipelineConfig",
    "StageConfig",
    "VersionPolicy",
    "WorkerPodConfig",
    "load_app_config",
    "model_route_prefix",
    "validate_model_name",
]
