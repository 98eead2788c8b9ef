"""Tenant names of multiplexed model families (``ModelConfig.multiplex``): which family
an OIP model name belongs to, and the config rules that keep that answer unambiguous.

Pure functions, no Ray: the config validates with them and the server's catch-all route
uses them to forward ``/v2/models/<tenant>/...`` to the tenant's family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serve_app.graph.spec import PipelineConfig
from serve_app.graph.structure import model_nodes
from serve_app.schema_base import validate_model_name


def family_of(name: str, prefixes: Mapping[str, str]) -> str | None:
    """The family (by ``family -> tenant_prefix``) whose tenants ``name`` would be, or
    None. A tenant name is a model name that starts with the prefix and is longer."""
    for family, prefix in prefixes.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return family
    return None


def is_tenant_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is a valid tenant name of a family with ``prefix``."""
    try:
        validate_model_name(name)
    except ValueError:
        return False
    return name.startswith(prefix) and len(name) > len(prefix)


def check_tenant_prefixes(
    prefixes: Mapping[str, str], names: Iterable[str], pipelines: Iterable[PipelineConfig]
) -> None:
    """Raise ``ValueError`` when a tenant name could mean two things: two families'
    prefixes (``family -> tenant_prefix``) overlap, one of the served ``names`` (models,
    pipelines, the server app) is a name a family would claim as a tenant, or a pipeline
    node uses a family (a family has no single model's tensor specs; address one
    tenant's model directly instead)."""
    if not prefixes:
        return
    items = sorted(prefixes.items())
    for i, (a, pa) in enumerate(items):
        for b, pb in items[i + 1 :]:
            if pa.startswith(pb) or pb.startswith(pa):
                raise ValueError(
                    f"multiplexed families {a!r} and {b!r} have overlapping tenant prefixes "
                    f"{pa!r} and {pb!r}: a tenant name would belong to both"
                )
    for name in names:
        family = family_of(name, prefixes)
        if family is not None:
            raise ValueError(
                f"{name!r} starts with the tenant prefix {prefixes[family]!r} of the "
                f"multiplexed family {family!r}: its route would shadow that tenant"
            )
    for p in pipelines:
        for node in model_nodes(p):
            if node.model in prefixes:
                raise ValueError(
                    f"pipeline {p.name!r} node {node.name!r}: model {node.model!r} is a "
                    "multiplexed family; pipelines call single models"
                )
