"""TorchServe until SIGTERM, the health check, or a batch job's child: the container's ENTRYPOINT and HEALTHCHECK.

    python scripts/server.py --model-store DIR --models detector=detector-v1.0.mar   # serve until SIGTERM
    python scripts/server.py --check detector                                        # a READY worker?
    python scripts/server.py batch s3://bucket/job                                   # one shard of a batch job

AWS Batch cannot replace an image's ENTRYPOINT, so a job definition's command starts with `batch`.
"""

import sys

if sys.argv[1:2] == ["batch"]:
    from objdetect_serving.batch import main

    sys.argv.pop(1)
else:
    from objdetect_serving.torchserve import main

if __name__ == "__main__":
    sys.exit(main())
