"""Wire protocols: ``oip`` (Open Inference Protocol, KServe v2, REST and binary
tensors), ``grpc_codec`` (the same over gRPC, tritonclient's messages) and ``limits``
(the request limits both enforce).

May import: only the top-level ``errors``, ``constants``, ``schema_base``.
"""
