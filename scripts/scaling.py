"""The scaling policy of terraform/ played through a traffic trace (a burst, then silence): a
per-minute table, how long scale-out and scale-in take, and what spare capacity costs
(objdetect_tools.scaling; terraform/README.md "Scaling and its cost" quotes it).

    python scripts/scaling.py [--peak 1700] [--var max_tasks=6 --var instance_max_count=7] [--no-table]
"""

import sys

from objdetect_tools.scaling import main

if __name__ == "__main__":
    sys.exit(main())
