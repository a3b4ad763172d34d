"""objdetect-client: detect objects in images, folders, URL lists and S3 prefixes with a deployed
objdetect (`Client`), results as one small type (`Result`), and the `objdetect-client` CLI on top.

Needs requests, Pillow and tqdm, not torch; boto3 for s3:// sources and pycocotools for COCO
evaluation, the extras `s3` and `coco` (`pip install './handlers/objdetect_client[s3,coco]'` in a
checkout; docs/client.md).
"""

from .client import Client, Retry, Unreachable
from .result import Detection, Result

# The client's version (`objdetect-client --version`), and its distribution's: pyproject.toml beside
# this file reads it from here, so it is written once.
__version__ = "0.1.0"

__all__ = ["Client", "Detection", "Result", "Retry", "Unreachable", "__version__"]
