"""objdetect_tools: developing and delivering the service, never in an archive or the image.

The benchmark (bench), load tests (loadtest, locustfile), the images both send (workloads), the
embedded model's training (training), fuzzing (fuzz), the container image (containers, image_check, prune_venv)
and the AWS deployment (push, deploy).
"""
