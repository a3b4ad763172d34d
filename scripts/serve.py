"""`make serve`: build the model archive and serve it on 127.0.0.1 until Ctrl-C (objdetect_serving.serve)."""

import sys

from objdetect_serving.serve import main

if __name__ == "__main__":
    sys.exit(main())
