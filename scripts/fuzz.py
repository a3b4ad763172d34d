"""`make fuzz SECONDS=600`: coverage-guided fuzzing of the request path (objdetect_tools.fuzz).

    python scripts/fuzz.py [--seconds 600] [--out reports/fuzz]
"""

import sys

from objdetect_tools.fuzz import main

if __name__ == "__main__":
    sys.exit(main())
