"""``serve-app k8s apply`` refuses a KubeRay operator older than the manifests need.

The stand-in API server serves the installed ``rayservices.ray.io`` CRD; an older
operator's is the vendored v1.7.0 one without the fields KubeRay added later (the field
lists per release come from every v1.x tag's CRD, see ``serve_app.k8s.skew``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.k8s.skew import FIELD_SINCE, check_rayservice_crd, undeclared_fields
from tests.k8s import crd_schema as crds
from tests.k8s import fake_apiserver as fk
from tests.k8s.conftest import run_cli
from tests.k8s.test_manifests import OVERLAYS, one, render

NS = "serving"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayservices.ray.io"
pytestmark = crds.needs_crds


def older_crd(*fields: str) -> dict[str, Any]:
    """The v1.7.0 CRD without ``fields`` (dotted paths under the schema's root)."""
    crd = copy.deepcopy(fk.installed_crd())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for field in fields:
        *parents, leaf = field.split(".")
        node = schema
        for p in parents:
            node = node["properties"][p]
        del node["properties"][leaf]
    return crd


def _rayservice_file(tmp_path: Path, overlay: str = "gpu") -> str:
    path = tmp_path / "rayservice.yaml"
    path.write_text(yaml.safe_dump(one(render(overlay), "RayService")), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_field_the_overlays_use_is_in_v17_and_dated(overlay: str) -> None:
    rs = one(render(overlay), "RayService")
    assert undeclared_fields({"spec": rs["spec"]}, crds.crd_schema("RayService")) == []
    # Each dated field is declared by v1.7.0 (the table names no field KubeRay dropped).
    declared = older_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for field in FIELD_SINCE:
        node = declared
        for part in field.split("."):
            node = node["properties"][part]


def test_kuberay_14_crd_is_refused_naming_fields_and_versions(
    tmp_path, kubeconfig, server, capsys
) -> None:
    # KubeRay v1.4.2's RayService CRD lacks exactly these of the fields the gpu overlay uses.
    server.crds[fk.RESOURCE] = older_crd(
        "spec.rayClusterConfig.authOptions", "spec.rayClusterDeletionDelaySeconds"
    )
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", _rayservice_file(tmp_path)],
        capsys,
    )
    assert (code, out) == (2, "")
    assert err == (
        "error: the installed rayservices.ray.io CRD does not declare "
        "spec.rayClusterConfig.authOptions (KubeRay >= v1.5.1), "
        "spec.rayClusterDeletionDelaySeconds (KubeRay >= v1.5.0): the KubeRay operator is "
        "older than these manifests need (KubeRay >= v1.5.1; tested with v1.7.0): upgrade "
        "the CRDs and the operator (kuberay/README.md, 'Version skew'), or a strict apply "
        "fails and a non-strict one drops the fields\n"
    )
    assert server.objects == {}
    assert [(m, p) for m, p, _ in server.requests] == [("GET", CRD_PATH)]


def test_v17_crd_applies_after_one_crd_read(tmp_path, kubeconfig, server, capsys) -> None:
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", _rayservice_file(tmp_path)],
        capsys,
    )
    assert (code, err) == (0, "")
    assert out == "rayservice.ray.io/serve-app created (namespace serving, generation 1)\n"
    assert server.requests[0][:2] == ("GET", CRD_PATH)


def test_unreadable_crd_warns_and_applies(tmp_path, kubeconfig, server, capsys) -> None:
    server.fail_next("GET", 403, "Forbidden", 'customresourcedefinitions.apiextensions.k8s.io '
                     '"rayservices.ray.io" is forbidden')  # fmt: skip
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", _rayservice_file(tmp_path)],
        capsys,
    )
    assert code == 0
    assert out == "rayservice.ray.io/serve-app created (namespace serving, generation 1)\n"
    assert err == (
        "warning: KubeRay version check skipped: cannot read the RayService CRD "
        '(customresourcedefinitions.apiextensions.k8s.io "rayservices.ray.io" is forbidden); '
        "grant get on customresourcedefinitions, or pass --skip-crd-check\n"
    )


def test_no_crd_is_refused_and_skip_flag_reads_none(tmp_path, kubeconfig, server, capsys) -> None:
    del server.crds[fk.RESOURCE]
    file = _rayservice_file(tmp_path)
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", file], capsys
    )
    assert (code, out) == (2, "")
    assert err == (
        "error: customresourcedefinition rayservices.ray.io not found: the KubeRay operator "
        "and its CRDs are not installed (kuberay/README.md)\n"
    )
    server.requests.clear()
    code, _, _ = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", file, "--skip-crd-check"],
        capsys,
    )
    assert code == 0
    assert CRD_PATH not in [p for _, p, _ in server.requests]


def test_undeclared_field_not_in_the_table_is_named_as_a_typo() -> None:
    rs = {"spec": {"serveConfigV2": "", "rayClusterConfg": {}}}
    with pytest.raises(Exception) as e:
        check_rayservice_crd(fk.installed_crd(), [rs])
    assert str(e.value) == (
        "the installed rayservices.ray.io CRD does not declare spec.rayClusterConfg "
        "(not in KubeRay v1.7.0 either: a typo?): fix the manifest"
    )
