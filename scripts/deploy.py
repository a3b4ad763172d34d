"""Roll out an image to the ECS service; roll back when it does not become stable (objdetect_tools.deploy)."""

import sys

from objdetect_tools.deploy import main

if __name__ == "__main__":
    sys.exit(main())
