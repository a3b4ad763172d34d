"""`make image FLAVOR=cuda|cpu [MODEL=...] [WEIGHTS=... LABELS=...]`: build objdetect:<flavor> and print
its sizes on one line (objdetect_tools.containers: docker buildx where a Docker engine runs, else buildah)."""

import sys

from objdetect_tools.containers import main

if __name__ == "__main__":
    sys.exit(main())
