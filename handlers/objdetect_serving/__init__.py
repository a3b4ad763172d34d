"""objdetect_serving: TorchServe around our handler, for development and in the image.

Model archives (archive), TorchServe's lifecycle and the health check (torchserve), its
management API (management), the operators' model-version commands (versions) and `make serve`
(serve). Not packed into archives: a worker needs only the objdetect package.
"""
