"""Inference graphs (pipelines), independent of Serve.

``nodes`` declares the nodes and tensor references, ``spec`` the ``PipelineConfig``;
``structure`` checks references, order and gates; ``tensor_types`` checks datatypes and
shapes against the models' specs; ``executor`` runs a graph over a backend that calls
the models (``combine`` holds the built-in combinators); ``staged`` builds the graph of a
model split into stages.

May import: ``models`` (tensor specs), ``repository``, ``protocol`` and the top-level
``errors``, ``constants``, ``schema_base``. Not ``config`` or anything above it.
"""
