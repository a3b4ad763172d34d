"""`make cold-start`: from a server's start to its first answered prediction, per CPU runtime
(objdetect_tools.cold_start).

    python scripts/cold_start.py [--models shapes fasterrcnn_mobilenet_v3_large_320_fpn] [--rounds 5]
"""

import sys

from objdetect_tools.cold_start import main

if __name__ == "__main__":
    sys.exit(main())
