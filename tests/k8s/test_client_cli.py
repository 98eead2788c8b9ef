"""``serve-app k8s ...`` end to end: argparse, a real kubeconfig file, the stand-in server.

``run_cli`` does what ``serve_app.cli.main`` does with a command's result: the exit code
it returns, or ``error: ...`` on stderr and exit 2 for a ``ServeAppError``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from pathlib import Path

import yaml

from serve_app.k8s.cli import add_k8s_commands
from tests.k8s import fake_apiserver as fk
from tests.k8s import kuberay_status as kr
from tests.k8s.conftest import API_TOKEN, KUBECONFIG_NS, run_cli

TOKEN = API_TOKEN
NS = KUBECONFIG_NS  # the kubeconfig context's namespace
A = "demo-7xk2p"
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serve-app-env"}}
SKIPPED = (
    "skipped ConfigMap/serve-app-env: `serve-app k8s apply` applies RayServices only; "
    "use kubectl apply"
)


def write_docs(tmp_path: Path, *docs: object) -> str:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return str(path)


def test_apply_applies_rayservices_and_names_skipped_kinds(tmp_path, kubeconfig, server, capsys):
    file = write_docs(tmp_path, CONFIGMAP, fk.rayservice_manifest(), None,
                      fk.rayservice_manifest("demo2"))  # fmt: skip
    code, out, err = run_cli(["k8s", "apply", "-f", file, "--kubeconfig", kubeconfig], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"rayservice.ray.io/demo created (namespace {NS}, generation 1)",
        f"rayservice.ray.io/demo2 created (namespace {NS}, generation 1)",
        SKIPPED,
    ]
    assert sorted(server.objects) == [(NS, "demo"), (NS, "demo2")]

    again = write_docs(tmp_path, fk.rayservice_manifest(image="ray:new"))
    code, out, _ = run_cli(["k8s", "apply", "-f", again, "--kubeconfig", kubeconfig], capsys)
    assert (code, out) == (0, f"rayservice.ray.io/demo configured (namespace {NS}, generation 2)\n")
    code, out, _ = run_cli(["k8s", "apply", "-f", again, "--kubeconfig", kubeconfig], capsys)
    assert (code, out) == (0, f"rayservice.ray.io/demo unchanged (namespace {NS}, generation 2)\n")
    labelled = fk.rayservice_manifest(image="ray:new")
    labelled["metadata"]["labels"]["team"] = "a"
    code, out, _ = run_cli(
        ["k8s", "apply", "-f", write_docs(tmp_path, labelled), "--kubeconfig", kubeconfig], capsys
    )
    line = f"rayservice.ray.io/demo configured (namespace {NS}, generation 2, metadata only)"
    assert (code, out) == (0, line + "\n")


def test_apply_namespace_option(tmp_path, kubeconfig, server, capsys) -> None:
    file = write_docs(tmp_path, fk.rayservice_manifest())
    code, out, _ = run_cli(
        ["k8s", "apply", "-f", file, "--kubeconfig", kubeconfig, "-n", "other"], capsys
    )
    assert (code, out) == (0, "rayservice.ray.io/demo created (namespace other, generation 1)\n")
    assert list(server.objects) == [("other", "demo")]


def test_apply_without_rayservice_fails(tmp_path, kubeconfig, server, capsys) -> None:
    file = write_docs(tmp_path, CONFIGMAP)
    code, out, err = run_cli(["k8s", "apply", "-f", file, "--kubeconfig", kubeconfig], capsys)
    assert (code, out) == (2, "")
    assert err == f"error: {file}: no ray.io/v1 RayService document (ConfigMap/serve-app-env)\n"
    assert server.requests == []


def test_apply_checks_every_rayservice_first(tmp_path, kubeconfig, server, capsys) -> None:
    old = {**fk.rayservice_manifest("old"), "apiVersion": "ray.io/v1alpha1"}
    file = write_docs(tmp_path, fk.rayservice_manifest(), old)
    code, _, err = run_cli(["k8s", "apply", "-f", file, "--kubeconfig", kubeconfig], capsys)
    assert code == 2
    assert err == (
        f"error: {file}: a RayService needs apiVersion ray.io/v1 and metadata.name, "
        "got apiVersion ray.io/v1alpha1\n"
    )
    assert server.objects == {}


def test_status_text_and_json(tmp_path, kubeconfig, server, capsys) -> None:
    run_cli(["k8s", "apply", "-f", write_docs(tmp_path, fk.rayservice_manifest()),
             "--kubeconfig", kubeconfig], capsys)  # fmt: skip
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))

    code, out, err = run_cli(["k8s", "status", "demo", "--kubeconfig", kubeconfig], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"rayservice {NS}/demo: generation 1, observed 1, ready: yes",
        "Ready: True (NonZeroServeEndpoints) Number of serve endpoints is greater than 0",
        "UpgradeInProgress: False (NoPendingCluster) Active Ray cluster exists and no pending "
        "Ray cluster",
        "serve endpoints: 2",
        f"active cluster: {A} (state ready, 1 ready workers)",
        "  app embed: RUNNING",
        "    deployment EmbedModel: HEALTHY",
        "pending cluster: none",
    ]

    code, out, _ = run_cli(
        ["k8s", "status", "demo", "-o", "json", "--kubeconfig", kubeconfig], capsys
    )
    data = json.loads(out)
    assert (code, data["name"], data["namespace"], data["pending"]) == (0, "demo", NS, None)
    assert [(c["type"], c["status"]) for c in data["conditions"]] == [
        ("Ready", "True"), ("UpgradeInProgress", "False")]  # fmt: skip
    assert data["active"]["applications"]["embed"]["status"] == "RUNNING"

    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}, deployment="UPDATING"))
    code, out, _ = run_cli(["k8s", "status", "demo", "--kubeconfig", kubeconfig], capsys)
    assert out.splitlines()[0] == (
        f"rayservice {NS}/demo: generation 1, observed 1, ready: no (deployment "
        "embed/EmbedModel is UPDATING)"
    )


def test_wait_prints_progress_until_ready(tmp_path, kubeconfig, server, capsys) -> None:
    run_cli(["k8s", "apply", "-f", write_docs(tmp_path, fk.rayservice_manifest()),
             "--kubeconfig", kubeconfig], capsys)  # fmt: skip
    server.script_status(NS, "demo", [
        kr.initializing(1, A),
        kr.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"),
        kr.ready(1, A, {"embed": "RUNNING"}),
    ])  # fmt: skip
    argv = ["k8s", "wait", "demo", "--timeout-s", "5", "--poll-interval-s", "0.01"]
    code, out, err = run_cli([*argv, "--kubeconfig", kubeconfig], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert all(re.match(r"^\[ +\d+\.\d s\] ", line) for line in lines[:-1])
    init = "Ready=False (Initializing) UpgradeInProgress=False (Initializing) endpoints=0"
    assert [line.split("] ", 1)[1] for line in lines[:-1]] == [
        f"{init} generation=1/1 active=- pending={A}[]",
        f"{init} generation=1/1 active=- pending={A}[embed=DEPLOYING]",
        "Ready=True (NonZeroServeEndpoints) UpgradeInProgress=False (NoPendingCluster) "
        f"endpoints=2 generation=1/1 active={A}[embed=RUNNING]",
    ]
    assert lines[-1] == (
        f"rayservice {NS}/demo ready: 2 serve endpoints, active cluster {A}, generation 1"
    )


def test_wait_timeout_exits_2(tmp_path, kubeconfig, server, capsys) -> None:
    run_cli(["k8s", "apply", "-f", write_docs(tmp_path, fk.rayservice_manifest()),
             "--kubeconfig", kubeconfig], capsys)  # fmt: skip
    argv = ["k8s", "wait", "demo", "--timeout-s", "0.1", "--poll-interval-s", "0.02"]
    code, out, err = run_cli([*argv, "--kubeconfig", kubeconfig], capsys)
    unset = "Ready=Unknown (not set) UpgradeInProgress=Unknown (not set) endpoints=0"
    assert code == 2 and out.count("\n") == 1
    assert err == (
        f"error: rayservice {NS}/demo not ready after 0.1 s; waiting for: Ready is not set; "
        f"last status: {unset} "
        "generation=0/1 active=-\n"
    )


def test_delete(tmp_path, kubeconfig, server, capsys) -> None:
    run_cli(["k8s", "apply", "-f", write_docs(tmp_path, fk.rayservice_manifest()),
             "--kubeconfig", kubeconfig], capsys)  # fmt: skip
    delete = ["k8s", "delete", "demo", "--kubeconfig", kubeconfig]
    assert run_cli(delete, capsys) == (0, f"rayservice.ray.io/demo deleted (namespace {NS})\n", "")
    assert server.objects == {}
    assert run_cli(delete, capsys) == (2, "", 'error: rayservices.ray.io "demo" not found\n')
    assert run_cli([*delete, "--ignore-not-found"], capsys) == (
        0, 'rayservices.ray.io "demo" not found (ignored)\n', "")  # fmt: skip


def test_delete_held_by_a_finalizer_waits(tmp_path, kubeconfig, server, capsys) -> None:
    run_cli(["k8s", "apply", "-f", write_docs(tmp_path, fk.rayservice_manifest()),
             "--kubeconfig", kubeconfig], capsys)  # fmt: skip
    server.add_finalizer(NS, "demo", kr.RAYSERVICE_FINALIZER)
    delete = ["k8s", "delete", "demo", "--kubeconfig", kubeconfig]
    deleting = (
        f"rayservice.ray.io/demo deleting (namespace {NS}, finalizers: {kr.RAYSERVICE_FINALIZER})\n"
    )
    assert run_cli(delete, capsys) == (0, deleting, "")
    assert run_cli([*delete, "--wait", "--timeout-s", "0.1"], capsys) == (
        2,
        deleting,
        f"error: rayservice {NS}/demo still exists after 0.1 s (finalizers: "
        f"{kr.RAYSERVICE_FINALIZER}; is the KubeRay operator running?)\n",
    )
    threading.Timer(0.3, server.remove_finalizer, (NS, "demo", kr.RAYSERVICE_FINALIZER)).start()
    assert run_cli([*delete, "--wait", "--timeout-s", "10"], capsys) == (
        0, deleting + f"rayservice.ray.io/demo deleted (namespace {NS})\n", "")  # fmt: skip
    assert not server.exists(NS, "demo")


def test_context_option_selects_the_cluster(kubeconfig, server, capsys) -> None:
    config = yaml.safe_load(Path(kubeconfig).read_text(encoding="utf-8"))
    down = config["clusters"][1]["cluster"]["server"]
    argv = ["k8s", "status", "demo", "--kubeconfig", kubeconfig, "--context", "down"]
    code, out, err = run_cli(argv, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot reach the Kubernetes API server at {down}: ")
    assert server.requests == []


def test_missing_kubeconfig(tmp_path, capsys) -> None:
    missing = str(tmp_path / "nope")
    code, out, err = run_cli(["k8s", "status", "demo", "--kubeconfig", missing], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot load kubeconfig {missing}: ")


def test_defaults() -> None:
    parser = argparse.ArgumentParser()
    k8s = add_k8s_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["k8s", "wait", "demo"])
    assert (args.timeout_s, args.poll_interval_s, args.namespace, args.kubeconfig) == (
        600.0, 2.0, None, None)  # fmt: skip
    assert args.context is None and k8s.prog.endswith(" k8s")
