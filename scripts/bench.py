"""`make bench`: our handler beside TorchServe's stock object_detector and the bare model (objdetect_tools.bench).

    python scripts/bench.py                              # the full run (about 27 minutes on 2 cores)
    python scripts/bench.py --quick                      # a smoke run of a minute or two (tests/test_bench.py)
    python scripts/bench.py --variants ours_exact        # also our handler with its optimizations off (exact path)
    python scripts/bench.py --markdown-only              # rewrite docs/benchmarks.md from reports/bench.json
"""

import sys

from objdetect_tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
