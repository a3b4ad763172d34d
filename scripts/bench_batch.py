"""The batch job beside objdetect-client --concurrency 4 against a local server, side by side on this
machine (objdetect_tools.bench_batch)."""

import sys

from objdetect_tools.bench_batch import main

if __name__ == "__main__":
    sys.exit(main())
