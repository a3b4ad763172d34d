"""`make train-embedded`: retrain the embedded shapes model from scratch (objdetect_tools.training).

    python scripts/train_embedded.py --minutes 19 --out model_store/embedded/shapes_detector.pt
"""

import sys

from objdetect_tools.training import main

if __name__ == "__main__":
    sys.exit(main())
