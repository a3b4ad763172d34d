# objdetect: TorchServe + torchvision Faster R-CNN in a slim multi-stage image (`make image`).
#   FLAVOR=cuda  PyPI's torch wheels (CUDA 13): what ECS GPU instances run; runs on a CPU too.
#   FLAVOR=cpu   PyTorch's CPU wheel index: CPU only, a fraction of the size.
# The build stage makes the venv, a minimal Java runtime and the model archive; the runtime stage
# copies only those onto the slim base. docs/image.md: what is pruned and how it was shown safe.
# Layers are ordered so that a code or model change rebuilds only the small application layer:
# the multi-GB venv layer changes only with pyproject.toml.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# A fine-tuned checkpoint and its labels file come in as the build context of this name
# (`--build-context model-input=DIR`, which replaces this empty stage; WEIGHTS and LABELS name the
# files inside it): they live outside the checkout, or in git-ignored places the main context skips.
FROM scratch AS model-input

FROM ${BASE_IMAGE} AS build
ARG FLAVOR=cuda
ARG WITH_TRITON=false
ARG CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra wheel sources for pip (a local mirror); pip reads these from the environment.
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A JDK to cut a Java runtime to the modules TorchServe's frontend uses and to compile objdetect's
# request checks into it; binutils to strip; Debian's Netty (security fixes backported) to replace
# the one TorchServe's frontend bundles (handlers/objdetect_serving/frontend.py).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless binutils libnetty-java \
 && rm -rf /var/lib/apt/lists/*
# jdeps on model-server.jar names these and a few more; serving, management and metrics were
# tested with exactly these (java.desktop stays: the frontend uses java.beans).
RUN jlink --add-modules java.base,java.desktop,java.logging,java.management,java.naming,java.sql,java.xml,jdk.unsupported \
      --strip-debug --no-header-files --no-man-pages --compress=2 --output /opt/jre

WORKDIR /src
COPY pyproject.toml ./
COPY handlers/objdetect_tools/prune_venv.py handlers/objdetect_serving/frontend.py \
     handlers/objdetect_serving/HttpRequestHandler.java ./
# The serving venv: pyproject's dependencies (and, for the cpu flavor, OpenVINO, which is
# pruned to its CPU runtime), without the build-only archiver. Archiver and a whole OpenVINO,
# which converts the model's parts for the archive, go aside in /opt/build-tools, for this stage
# alone. The CA bundle arrives as a build secret where TLS is intercepted; it never lands in a layer.
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && python3 -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
archiver = [d for d in project['dependencies'] if d.startswith('torch-model-archiver')]; \
openvino = project['optional-dependencies']['openvino'] if '$FLAVOR' == 'cpu' else []; \
print('\n'.join(d for d in project['dependencies'] + openvino if d not in archiver), file=open('/tmp/serving.txt', 'w')); \
print('\n'.join(archiver), file=open('/tmp/build.txt', 'w')); print('\n'.join(openvino), file=open('/tmp/convert.txt', 'w'))" \
 && python3 -m venv /opt/venv \
 && if [ "$FLAVOR" = cpu ]; then \
      /opt/venv/bin/pip install --no-cache-dir --index-url "$CPU_INDEX_URL" torch==2.14.1+cpu torchvision==0.29.1+cpu; \
    fi \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/serving.txt \
 && /opt/venv/bin/pip install --no-cache-dir --target /opt/build-tools -r /tmp/build.txt \
 && if [ -s /tmp/convert.txt ]; then \
      /opt/venv/bin/pip install --no-cache-dir --no-deps --target /opt/build-tools -r /tmp/convert.txt; \
    fi \
 && if [ "$WITH_TRITON" != true ]; then /opt/venv/bin/pip uninstall -y -q triton; fi \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools wheel \
 && /opt/venv/bin/python frontend.py install \
 && /opt/venv/bin/python prune_venv.py /opt/venv \
 && /opt/venv/bin/python -c "import torch, torchvision; \
m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval(); \
m([torch.rand(3, 240, 320)]); print('pruned venv: torch', torch.__version__, 'torchvision', torchvision.__version__, 'predict')"

# The application, laid out in /opt/objdetect as in the checkout: the model archive (COCO models
# download their published weights here and verify their hash, unless WEIGHTS names a checkpoint;
# verified with the pruned venv alone: a forward pass in the runtime the flavor serves with),
# TorchServe's configuration, and objdetect_serving with its two entry points, scripts/server.py
# (entrypoint and health check) and scripts/models.py (model versions, for operators). The
# objdetect package travels in the archive; the checkpoint only in it, never in the runtime stage.
ARG MODEL=shapes
ARG WEIGHTS=
ARG LABELS=
COPY handlers/ handlers/
COPY scripts/ scripts/
COPY model_store/embedded/ model_store/embedded/
COPY config.properties ./
COPY --from=model-input . /src/model-input/
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export REQUESTS_CA_BUNDLE=/run/secrets/cacert; fi \
 && PYTHONPATH=/src/handlers:/opt/build-tools PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/python scripts/build_mar.py \
      --model "$MODEL" ${WEIGHTS:+--weights "/src/model-input/$WEIGHTS"} \
      ${LABELS:+--labels "/src/model-input/$LABELS"} --out-dir /opt/objdetect/model_store \
 && PYTHONPATH=/src/handlers PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/python scripts/build_mar.py \
      --verify /opt/objdetect/model_store/detector-v1.0.mar \
      --expect-runtime "$(if [ "$FLAVOR" = cpu ]; then echo openvino; else echo torch; fi)" \
 && mkdir -p /opt/objdetect/scripts /opt/objdetect/handlers \
 && cp config.properties /opt/objdetect/ \
 && cp scripts/server.py scripts/models.py /opt/objdetect/scripts/ \
 && cp -r handlers/objdetect_serving /opt/objdetect/handlers/ \
 && /opt/venv/bin/python -m compileall -q /opt/objdetect/handlers


FROM ${BASE_IMAGE} AS runtime
ARG FLAVOR=cuda
ARG MODEL=shapes
ARG WEIGHTS=
ARG VERSION=dev
ARG REVISION=unknown
# io.github.objdetect.model: the registry model the archive serves, which push.py checks before it
# pushes; .weights: the checkpoint baked in instead of the model's default weights, as its path in
# the model-input context (empty: none).
LABEL org.opencontainers.image.title="objdetect" \
      org.opencontainers.image.description="Object detection with torchvision Faster R-CNN behind TorchServe (${FLAVOR}, model ${MODEL})" \
      io.github.objdetect.model="${MODEL}" \
      io.github.objdetect.weights="${WEIGHTS}" \
      org.opencontainers.image.source="https://github.com/objdetect/objdetect" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/objdetect objdetect
COPY --from=build /opt/jre /opt/jre
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/objdetect /opt/objdetect

# Inference on every interface (the load balancer's); management and metrics stay on loopback.
ENV PATH=/opt/venv/bin:/opt/jre/bin:$PATH \
    PYTHONPATH=/opt/objdetect/handlers \
    JAVA_HOME=/opt/jre \
    TS_INFERENCE_ADDRESS=http://0.0.0.0:8080 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/objdetect
EXPOSE 8080
# Healthy means every model registered with a READY worker and no drain; the inference port's /ping
# answers the load balancer from the same markers (docs/releases.md).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/objdetect/scripts/server.py", "--check", "detector"]
# server.py runs TorchServe in its own process group and stops all of it on SIGTERM.
ENTRYPOINT ["python", "/opt/objdetect/scripts/server.py"]
CMD ["--models", "detector=detector-v1.0.mar"]
