"""Push the image to the deployment's ECR repository, tagged with the git commit (objdetect_tools.push)."""

import sys

from objdetect_tools.push import main

if __name__ == "__main__":
    sys.exit(main())
