"""serve_app: autoscaling multi-model inference on Ray Serve with weights on a mounted volume.

The packages, lowest layer first (docs/architecture.md#layers; tests/unit/test_layers.py
checks that imports only go down): ``protocol`` and ``repository``; ``models``;
``graph``; ``config``; ``deploy``; ``server``; ``app`` (the Serve entry point) and
``local``; ``k8s``; ``cli``. ``errors``, ``constants`` and ``schema_base`` sit below
them all and may import nothing of serve_app.

May import: nothing of serve_app (this module only holds the version).
"""

__version__ = "0.1.0"
