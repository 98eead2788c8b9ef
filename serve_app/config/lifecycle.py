"""AppConfig sections of a model's lifecycle: multiplexed families, versions side by
side and canaries (re-exported by ``serve_app.config``)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from serve_app.schema_base import StrictModel


class MultiplexConfig(StrictModel):
    """A family of many small models of one architecture (tenants) served by one
    deployment whose replicas each keep an LRU of loaded tenants (``@serve.multiplexed``).

    A tenant is a repository model whose folder name starts with ``tenant_prefix``; its
    name is its OIP model name (``/v2/models/<tenant>/infer``) and its multiplexed model
    id (``serve_multiplexed_model_id`` header on ``/v2/models/<family>/infer``). Tenants
    published after deployment are served without a redeploy."""

    tenant_prefix: str = Field(
        description=(
            "Repository folders starting with this are the family's tenants, e.g. "
            "'tenant-' for tenant-0001, tenant-0002, ..."
        ),
        pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$",
    )
    max_models_per_replica: int = Field(
        8,
        ge=1,
        le=10000,
        description=(
            "Tenants one replica keeps loaded; loading one more evicts the least recently "
            "used (Ray's max_num_models_per_replica)."
        ),
    )


class VersionPolicy(StrictModel):
    """Versions of one model served side by side (Triton's version policy): each served
    version is its own Serve application, routed at ``/v2/models/<name>/versions/<v>``;
    ``/v2/models/<name>`` goes to the newest served version. Set exactly one field."""

    latest_n: int | None = Field(
        None,
        ge=1,
        le=8,
        description=(
            "Serve the N highest published versions, resolved when the config is "
            "deployed (`serve-app demo`/`serve-app deploy`); not for a RayService, whose "
            "serveConfigV2 is fixed at render time: use `specific` there."
        ),
    )
    specific: list[int] | None = Field(
        None, min_length=1, description="Serve exactly these versions (each must be published)."
    )

    @field_validator("specific")
    @classmethod
    def _distinct_sorted(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (min(v) < 1 or len(set(v)) != len(v)):
            raise ValueError(f"specific must be distinct versions >= 1, got {v}")
        return None if v is None else sorted(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        if (self.latest_n is None) == (self.specific is None):
            raise ValueError("version_policy takes exactly one of latest_n or specific")
        return self


class CanaryConfig(StrictModel):
    """A canary: a share of the model's traffic goes to a newer version, served by its
    own application (also reachable at ``/v2/models/<name>/versions/<version>``).
    ``serve-app deploy --promote <model>`` makes it the model's version; ``--rollback``
    removes it."""

    version: int = Field(ge=1, description="The version under test.")
    percent: float = Field(
        gt=0, le=100, description="Share of unversioned requests it answers, in percent."
    )
