"""`make image-test`: build objdetect:cuda, run it and check it (objdetect_tools.image_check)."""

import sys

from objdetect_tools.image_check import main

if __name__ == "__main__":
    sys.exit(main())
