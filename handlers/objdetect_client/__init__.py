"""objdetect-client: detect objects in images, folders, URL lists and S3 prefixes with a deployed
objdetect (`Client`), results as one small type (`Result`), and the `objdetect-client` CLI on top.

Needs requests, Pillow and tqdm, not torch; boto3 for s3:// sources and pycocotools for COCO
evaluation (`pip install 'objdetect[client]' (or '.[client]' in a checkout)`).
"""

from .client import Client, Retry
from .result import Detection, Result

__all__ = ["Client", "Detection", "Result", "Retry"]
