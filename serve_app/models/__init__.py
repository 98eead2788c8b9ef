"""Model adapters: turn verified repository files into something that runs a batch.

``base`` holds the adapter interface and tensor specs; ``registry`` picks an adapter by
the manifest's framework (``torch_module``, ``hf_embedding``, ``hf_stages``,
``onnx_embedding``); ``specs`` reads a version's declared tensor specs; ``text`` the
tokenizer input; ``threads`` the intra-op thread settings; ``onnx_export`` publishes an
ONNX variant.

May import: ``repository``, ``protocol`` and the top-level ``errors``, ``constants``,
``schema_base``. Not ``graph``, ``config`` or anything above.
"""

from serve_app.models.base import ModelAdapter, TensorSpec
from serve_app.models.registry import load_adapter

__all__ = ["ModelAdapter", "TensorSpec", "load_adapter"]
