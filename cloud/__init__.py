"""The decoding cloud: a gRPC server that turns codes back into items (torch-free)."""
