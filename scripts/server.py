"""TorchServe until SIGTERM, or the health check: the container's ENTRYPOINT and HEALTHCHECK.

    python scripts/server.py --model-store DIR --models detector=detector-v1.0.mar   # serve until SIGTERM
    python scripts/server.py --check detector                                        # a READY worker?
"""

import sys

from objdetect_serving.torchserve import main

if __name__ == "__main__":
    sys.exit(main())
