"""``serve-app render-k8s [--check]``: write (or check) the generated KubeRay manifests.

Before writing, it checks each profile's demand against its worker pods
(:mod:`serve_app.k8s.fit`: a replica that fits no pod is an error, a full scale beyond
the pods a warning), and prints for each overlay what the change does to a running
RayService (:mod:`serve_app.k8s.changes`): in place, replicas rolled, not applied, or a
new cluster.

``serve_app.cli`` wires it in with ``add_render_k8s_command(sub)``; nothing runs at import.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _render_k8s(a: argparse.Namespace) -> int:
    from serve_app.k8s.changes import format_changes, pending_changes
    from serve_app.k8s.fit import fit_reports
    from serve_app.k8s.render import render_k8s_files, stale_k8s_files, write_k8s_files

    try:
        reports = fit_reports(a.root)  # each profile's demand against its worker pods
        for line in (line for r in reports for line in (*r.errors, *r.warnings)):
            print(line, file=sys.stderr)
        if any(r.errors for r in reports):
            return 2
        for overlay, changes in pending_changes(a.root).items():
            if changes:
                print(format_changes(overlay, changes))
        if a.check:
            stale = stale_k8s_files(a.root)
            for path in stale:
                print(f"{path} is out of date; run `serve-app render-k8s`", file=sys.stderr)
            if not stale:
                print(f"{len(render_k8s_files(a.root))} generated KubeRay files are up to date")
            return 1 if stale else 0
        changed = set(write_k8s_files(a.root))
    except (OSError, ValueError) as e:  # a missing/invalid cluster AppConfig
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in render_k8s_files(a.root):
        print(f"{'wrote' if path in changed else 'unchanged'} {path}")
    return 0


def add_render_k8s_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``render-k8s`` subcommand to ``subparsers`` (from ``add_subparsers()``).

    Returns:
        The new subparser; its ``func`` default runs the command and returns an exit code
        (0 done or up to date, 1 files out of date with ``--check``, 2 invalid config
        or a replica that fits no worker pod).
    """
    p: argparse.ArgumentParser = subparsers.add_parser(
        "render-k8s",
        help="write kuberay/overlays/*/*.generated.yaml from configs/cluster-*.yaml",
    )
    p.add_argument(
        "--root", default=".", help="repository root holding configs/ and kuberay/ (default: .)"
    )
    p.add_argument("--check", action="store_true", help="fail if a generated file would change")
    p.set_defaults(func=_render_k8s)
    return p
