"""objdetect: the request path behind the TorchServe handler, importable and testable without TorchServe.

input -> decode -> transform -> predict -> postprocess; `objdetect.pipeline.Detector` tells it in order.
"""
