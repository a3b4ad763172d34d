"""`make loadtest` / `make soak`: locust headless against a server, with a report (objdetect_tools.loadtest).

    python scripts/loadtest.py [--host URL] [--users 4] [--spawn-rate 2] [--duration 60s] [--soak --rate 1 --warmup-s 60]
"""

import sys

from objdetect_tools.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
