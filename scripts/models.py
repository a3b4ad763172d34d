"""Model versions through TorchServe's management API (objdetect_serving.versions).

    python scripts/models.py list | describe | register | set-default | rollback | scale | unregister
"""

import sys

from objdetect_serving.versions import main

if __name__ == "__main__":
    sys.exit(main())
