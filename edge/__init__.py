"""The device client: ONNX Runtime encoder, quantisation and packing, gRPC to the cloud. Never imports torch."""
