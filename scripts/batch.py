"""Detection over a folder or an S3 prefix as a job: plan, run shards locally, status, collect
(objdetect_tools.batch)."""

import sys

from objdetect_tools.batch import main

if __name__ == "__main__":
    sys.exit(main())
