"""Model versions: publish to the S3 model store, release to the ECS service, or manage one TorchServe
(objdetect_tools.releases; in the image, which has no objdetect_tools, objdetect_serving.versions).

    python scripts/models.py publish | release | status | rollback [NAME]
    python scripts/models.py list | describe | register | set-default | scale | unregister
"""

import sys

# Where objdetect_tools is not installed (the image), only its one-server verbs, with no AWS code.
try:
    import objdetect_tools  # noqa: F401
except ModuleNotFoundError:
    from objdetect_serving.versions import main
else:
    from objdetect_tools.releases import main

if __name__ == "__main__":
    sys.exit(main())
