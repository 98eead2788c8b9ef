"""``serve-app`` command line: models publish/list/verify, render, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal

from serve_app.constants import DEFAULT_APP_CONFIG, DEFAULT_SERVE_CONFIG


def _models_publish(a: argparse.Namespace) -> int:
    from serve_app.repository import publish

    if a.format == "onnx":
        from serve_app.models.onnx_export import publish_onnx

        path = publish_onnx(a.src, a.repo, a.name, version=a.version, progress=not a.quiet)
    else:
        path = publish(a.src, a.repo, a.name, version=a.version, progress=not a.quiet)
    print(f"published {path}")
    return 0


def _models_list(a: argparse.Namespace) -> int:
    from serve_app.repository import ModelRepository

    repo = ModelRepository(a.repo)
    for name, versions in repo.models().items():
        for v in versions:
            m = repo.read_manifest(name, v)
            print(f"{name}\t{v}\t{m.format}\t{m.task}\t{m.total_bytes}\t{m.created_at}")
    return 0


def _models_verify(a: argparse.Namespace) -> int:
    from serve_app.errors import RepositoryError
    from serve_app.repository import ModelRepository

    repo = ModelRepository(a.repo, hash_workers=a.workers)
    names = [a.name] if a.name else list(repo.models())
    bad = 0
    for name in names:
        versions: list[Literal["latest"] | int] = (
            [a.version] if a.version else [*repo.versions(name)] or ["latest"]
        )
        for v in versions:
            try:
                ok = repo.verify(name, v)
                size = ok.manifest.total_bytes
                print(f"OK   {name}/{ok.version} ({size} bytes, {ok.verify_s:.2f} s)")
            except RepositoryError as e:
                print(f"FAIL {e}")
                bad += 1
    return 1 if bad else 0


def _render(a: argparse.Namespace) -> int:
    from serve_app.config import load_app_config
    from serve_app.deploy.render import render_local, write_if_changed

    app = load_app_config(a.config)
    text = render_local(app, a.config, a.out)
    if a.check:
        current = Path(a.out).read_text(encoding="utf-8") if Path(a.out).exists() else ""
        if current != text:
            print(f"{a.out} is out of date; run `serve-app render`", file=sys.stderr)
            return 1
        print(f"{a.out} is up to date")
        return 0
    changed = write_if_changed(Path(a.out), text)
    print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    return 0


def _train_demo_heads(a: argparse.Namespace) -> int:
    from serve_app.local.demo import ensure_demo_models
    from serve_app.local.demo_heads import train_demo_heads

    ensure_demo_models(a.repo, progress=not a.quiet, with_heads=False)
    for name, acc in train_demo_heads(a.repo, progress=not a.quiet).items():
        print(
            f"{name}: held-out accuracy {acc['held_out_accuracy']:.3f} "
            f"(train {acc['train_accuracy']:.3f})"
        )
    return 0


def _validate(a: argparse.Namespace) -> int:
    from serve_app.config import load_app_config
    from serve_app.deploy.pipeline_check import check_pipelines

    app = load_app_config(a.config)
    from serve_app.deploy.demand import compare, deployment_demands
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.local.capacity import local_capacity

    capacity = local_capacity(a.num_cpus, a.num_gpus)
    where = "this machine" if a.num_cpus is None and a.num_gpus is None else "the demo's Ray"
    lines, fits = compare(deployment_demands(render_serve_config(app)), capacity, where)
    for line in lines:
        print(line)
    for line in check_pipelines(app, a.repo):
        print(line)
    return 0 if fits else 1


def _demo(a: argparse.Namespace) -> int:
    from serve_app.local.demo import run_demo

    ray_options = {
        "num_cpus": a.num_cpus,
        "num_gpus": a.num_gpus,
        "dashboard_port": a.dashboard_port,
        "metrics_port": a.metrics_port,
    }
    return run_demo(
        a.config,
        a.serve_config or None,
        stall_s=a.stall_s,
        ray_options=ray_options,
        verbose=a.verbose,
    )


def _deploy(a: argparse.Namespace) -> int:
    import os

    from serve_app.deploy.rollout import ServeRestApi, render_for_deploy, rollout
    from serve_app.local.cluster import TOKEN_PATH

    token_file = Path(a.token_file) if a.token_file else TOKEN_PATH
    token = os.environ.get("RAY_AUTH_TOKEN") or (
        token_file.read_text().strip() if token_file.is_file() else None
    )
    api = ServeRestApi(a.address, token)
    if a.promote or a.rollback:
        import yaml

        from serve_app.config import AppConfig
        from serve_app.deploy.guard import write_atomically
        from serve_app.deploy.rollout import end_canary, rollout_ending_canary

        text = Path(a.config).read_text()
        raw = yaml.safe_load(text)
        edited = end_canary(raw, a.promote or a.rollback, promote=bool(a.promote))
        before = render_for_deploy(AppConfig.model_validate(raw))
        after = render_for_deploy(AppConfig.model_validate(edited))
        changes = rollout_ending_canary(
            api, before, after, verify=not a.no_verify, wait_s=a.wait_s, source=a.config
        )
        # Only once Serve runs it: the file stays what is deployed.
        write_atomically(Path(a.config), yaml.safe_dump(edited, sort_keys=False), text)
        print(f"updated {a.config} (YAML comments are not kept)")
    else:
        changes = rollout(api, render_for_deploy(a.config), verify=not a.no_verify, wait_s=a.wait_s)
    print("rolled out: " + ", ".join(f"{n} v{new}" for n, (_, new) in changes.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (built on demand, never at import)."""
    p = argparse.ArgumentParser(prog="serve-app", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model repository commands")
    msub = models.add_subparsers(dest="models_command", required=True)
    pub = msub.add_parser("publish", help="copy a model into the repository as a new version")
    pub.add_argument("src", help="HF folder, .safetensors file, or folder with model.onnx")
    pub.add_argument("--repo", required=True, help="repository root")
    pub.add_argument("--name", required=True, help="model name")
    pub.add_argument("--version", type=int, default=None, help="version (default: next)")
    pub.add_argument(
        "--format",
        choices=["auto", "onnx"],
        default="auto",
        help="onnx: export a Hugging Face sentence-embedding folder to ONNX first",
    )
    pub.add_argument("--quiet", action="store_true", help="no progress bar")
    pub.set_defaults(func=_models_publish)
    ls = msub.add_parser("list", help="list models and versions")
    ls.add_argument("--repo", required=True)
    ls.set_defaults(func=_models_list)
    ver = msub.add_parser("verify", help="check sizes and sha256 of every file")
    ver.add_argument("--repo", required=True)
    ver.add_argument("--name", default=None)
    ver.add_argument("--version", type=int, default=None)
    ver.add_argument("--workers", type=int, default=4)
    ver.set_defaults(func=_models_verify)

    ren = sub.add_parser("render", help="write configs/local.yaml from the AppConfig")
    ren.add_argument("--config", default=DEFAULT_APP_CONFIG)
    ren.add_argument("--out", default=DEFAULT_SERVE_CONFIG)
    ren.add_argument("--check", action="store_true", help="fail if the file would change")
    ren.set_defaults(func=_render)

    heads = sub.add_parser(
        "train-demo-heads",
        help="train the triage heads of the demo pipeline on the shipped tickets and publish them",
    )
    heads.add_argument("--repo", default="./model-repository", help="repository root")
    heads.add_argument("--quiet", action="store_true", help="no progress bar")
    heads.set_defaults(func=_train_demo_heads)

    val = sub.add_parser(
        "validate",
        help="check the AppConfig's pipelines (datatypes, shapes) against the repository, "
        "and its CPU/GPU/memory demand against this machine",
    )
    val.add_argument("--config", default=DEFAULT_APP_CONFIG)
    val.add_argument("--repo", default=None, help="repository root (default: the config's)")
    val.add_argument("--num-cpus", type=int, default=None, help="as `demo --num-cpus`")
    val.add_argument("--num-gpus", type=int, default=None, help="as `demo --num-gpus`")
    val.set_defaults(func=_validate)

    demo = sub.add_parser("demo", help="publish demo models and serve them locally")
    demo.add_argument("--config", default=DEFAULT_APP_CONFIG, help="AppConfig file")
    demo.add_argument(
        "--serve-config",
        default=DEFAULT_SERVE_CONFIG,
        help="committed Serve config to check for drift ('' to skip)",
    )
    demo.add_argument(
        "--stall-s",
        type=float,
        default=None,
        help="give up starting when no replica changed state for this long "
        "(default 180; raise it for models that load for longer)",
    )
    demo.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for Ray")
    demo.add_argument(
        "--num-gpus", type=int, default=None, help="logical GPUs (placement works without CUDA)"
    )
    demo.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help="serve Ray's dashboard and Serve REST API on 127.0.0.1 (for `serve-app loadtest`)",
    )
    demo.add_argument(
        "--metrics-port", type=int, default=None, help="export Prometheus metrics on this port"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's own log lines here (default: only in its session's log files)",
    )
    demo.set_defaults(func=_demo)

    dep = sub.add_parser(
        "deploy",
        help="roll a running local Serve to the config (pins latest, verifies first)",
    )
    dep.add_argument("--config", default=DEFAULT_APP_CONFIG, help="AppConfig file")
    dep.add_argument(
        "--address", default="http://127.0.0.1:8265", help="Ray dashboard (Serve REST API)"
    )
    dep.add_argument(
        "--token-file", default=None, help="Ray auth token file (default ~/.ray/auth_token; "
        "RAY_AUTH_TOKEN wins)",
    )  # fmt: skip
    dep.add_argument(
        "--no-verify", action="store_true", help="skip the sha256 check of the new versions"
    )
    dep.add_argument("--wait-s", type=float, default=600.0, help="give up after this long")
    canary = dep.add_mutually_exclusive_group()
    canary.add_argument(
        "--promote", metavar="MODEL", help="make MODEL's canary its version (edits --config)"
    )
    canary.add_argument(
        "--rollback", metavar="MODEL", help="remove MODEL's canary (edits --config)"
    )
    dep.set_defaults(func=_deploy)

    from serve_app.k8s.cli import add_k8s_commands
    from serve_app.k8s.cli_render import add_render_k8s_command

    add_render_k8s_command(sub)
    add_k8s_commands(sub)
    from loadtest.cli import add_loadtest_commands

    add_loadtest_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``serve-app`` console script.

    The local Ray environment (loopback-only gRPC, no usage stats) is set first: Ray
    reads it once, when its constants module is first imported, so setting it later
    (e.g. when the demo starts Ray) misses it if anything imported ray before."""
    import os

    from serve_app.constants import LOCAL_RAY_ENV

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from serve_app.errors import ServeAppError

    try:
        return int(args.func(args))
    except ServeAppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
