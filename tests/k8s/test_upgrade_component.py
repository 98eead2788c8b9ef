"""components/incremental-upgrade: CRD-valid, and valid by KubeRay v1.7's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s import crd_schema as crds
from tests.k8s.conftest import overlay_with_components


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_incremental_upgrade_component(tmp_path: Path, overlay: str) -> None:
    docs = overlay_with_components(tmp_path, overlay, "incremental-upgrade")
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    if crds.crds_available():
        assert crds.crd_errors(rs) == []
    strategy = rs["spec"]["upgradeStrategy"]
    assert strategy["type"] == "NewClusterWithIncrementalUpgrade"
    # ValidateClusterUpgradeOptions (KubeRay v1.7 validation.go): the rules a spec that
    # passes the CRD can still fail, as Ready=False/ValidationFailed.
    opts = strategy["clusterUpgradeOptions"]
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert 0 < opts["stepSizePercent"] <= opts["maxSurgePercent"] <= 100
    assert opts["intervalSeconds"] > 0 and opts["gatewayClassName"]
