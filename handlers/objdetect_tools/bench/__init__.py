"""`make bench`: our handler beside TorchServe's stock object_detector and the bare model, in one run.

    python scripts/bench.py                              # the full run (40 min on 2 cores with two variants)
    python scripts/bench.py --quick                      # a smoke run of a minute or two (tests/test_bench.py)
    python scripts/bench.py --variants ours_exact        # also our handler with its optimizations off (exact path)
    python scripts/bench.py --markdown-only              # rewrite docs/benchmarks.md from reports/bench.json

Three ways to answer the same images with the same model and weights on the same machine:
- `direct`: the floor, in this process with no server: PIL decode -> pil_to_tensor -> float / 255
  -> model([tensor]) under torch.inference_mode. At concurrency N, N threads share the one model
  (--direct-mode serial: they take turns, a queue in front of one loop).
- `stock`: TorchServe with its built-in object_detector handler, as a user would package it
  (--model-file with one no-argument class, --serialized-file, index_to_name.json): stock_model.
- `ours`: our handler, the archive objdetect_serving.archive builds (scripts/build_mar.py).
Each server variant runs at its best configuration per cell: every candidate of --configs
(workers x batchSize) is measured --repeats times and the one with the highest median throughput
wins, answering without errors preferred. At concurrency 1 only 1 worker x batch 1 is a candidate:
a lone request never fills a batch (batchSize > 1 only adds maxBatchDelay) and a second worker
only halves the threads the one busy worker gets. Each worker gets cores / workers torch threads.
Within a configuration the stock and our servers are up at once and take turns, run by run (and
`direct` with them, in the first configuration that measures a cell), so that the drift of a
shared machine touches every variant alike and the ratios compare runs taken moments apart.

A cell (model, workload, concurrency) is measured as a closed loop: N clients each send an image,
wait for its answer and send the next, for --seconds and at least --min-requests per client,
after a warm-up that is not counted. An answer counts only when it is 200 and has the variant's
format; anything else is an error. Throughput is answered images per second of wall time;
p50/p99 are over the answered requests. Each cell is repeated --repeats times and the median of
the runs is reported (errors and requests: summed over the runs). The clients are plain threads,
not locust: locust's gevent monkey-patching would turn `direct`'s threads into greenlets taking
turns on one OS thread, and so change what is measured.

Workloads: `small` 640x480 JPEGs, `phone` 4032x3024 JPEGs with sensor-like noise (~3 MB at
quality 90, as phones produce), `mixed` 640x480, 1280x960 and 4032x3024 JPEGs and an 800x600 PNG,
client k sending image (k + i) mod 4 as its i-th request, so that concurrent requests (a batch
window) always differ in size: the stock handler stacks a batch into one tensor and fails it.
Models: the embedded `shapes` model, and torchvision architectures with seeded random weights
(no COCO weights can be downloaded here; timing does not depend on them), one class logit raised
so that they detect something, as tests/test_accuracy.py does.

Modules: models (the weights and models measured), stock_model (the stock archive's model file),
archives (server configurations and archives), load (the images sent and the closed loop), run
(the measurement), results (what was measured, and bench.json), goals, machine, report
(docs/benchmarks.md), cli (`python scripts/bench.py`).
"""
