"""gRPC ingress config: the Serve config it renders and the HAProxy default-backend rule
(no Ray started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.config.grpc import SERVICER_FUNCTION
from serve_app.deploy.serve_config import render_serve_config
from serve_app.local.ingress import grpc_backend_name, write_wrapper

HAPROXY_CONFIG = """frontend grpc_frontend
    bind 127.0.0.1:9000 proto h2
{uses}
    default_backend default_grpc_backend
backend default_grpc_backend
    mode http
{backends}"""


def app_config(grpc: dict[str, object]) -> AppConfig:
    return AppConfig.model_validate({"models": [{"name": "minilm"}], "grpc": grpc})


def test_enabled_grpc_renders_serve_grpc_options() -> None:
    config = render_serve_config(app_config({"enabled": True, "port": 9100}))
    assert config["grpc_options"] == {
        "port": 9100,
        "grpc_servicer_functions": [SERVICER_FUNCTION],
        "request_timeout_s": 30.0,
    }
    schema = ServeDeploySchema.model_validate(config)
    assert schema.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]


def test_disabled_grpc_renders_nothing() -> None:
    assert "grpc_options" not in render_serve_config(app_config({}))


def run_wrapper(tmp_path: Path, backends: list[str]) -> str:
    fake = tmp_path / "fake-haproxy"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_CONFIG.format(
            uses="\n".join(f"    use_backend {b} if is_{b}" for b in backends),
            backends="".join(f"backend {b}\n    mode http\n" for b in backends),
        )
    )
    wrapper = write_wrapper(
        "127.0.0.1", binary=str(fake), directory=str(tmp_path), grpc_default_app="oip"
    )
    subprocess.run([str(wrapper), "-f", str(cfg)], check=True, timeout=10)
    return next(line.strip() for line in cfg.read_text().splitlines() if "default_backend" in line)


def test_wrapper_makes_the_server_app_the_grpc_default(tmp_path: Path) -> None:
    assert grpc_backend_name("oip") == "grpc-oip"
    assert run_wrapper(tmp_path, ["grpc-minilm", "grpc-oip"]) == "default_backend grpc-oip"


def test_wrapper_leaves_a_config_without_the_server_backend(tmp_path: Path) -> None:
    # During startup the server application may have no gRPC backend yet: pointing the
    # default at a missing backend would make the whole config invalid.
    assert run_wrapper(tmp_path, ["grpc-minilm"]) == "default_backend default_grpc_backend"
