"""`make gpu-check`: the GPU path, checked and timed in-process, one report (objdetect_tools.gpu_check).

    python scripts/gpu_check.py [--out DIR] [--quick] [--require-cuda]
"""

import sys

from objdetect_tools.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
