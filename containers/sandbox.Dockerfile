# The Docker backend's sandbox image: a Python base plus the stdlib-only sandbox worker.
#
# Build context: mucode/sandbox/worker (only its *.py files are copied). Built by
# `mucode sandbox build` (mucode.sandbox.docker.build_image) or containers/setup-docker.sh:
#   docker build -f containers/sandbox.Dockerfile --build-arg BASE_IMAGE=python:3.12-slim \
#       -t mucode-sandbox:latest mucode/sandbox/worker
# The host starts containers from it with network none, a read-only root, a tmpfs /tmp,
# all capabilities dropped, no-new-privileges, a non-root numeric uid and pids/memory
# limits (mucode/sandbox/docker.py); the image itself holds no secrets and no project code
# beyond the worker.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
# Lets setup-docker.sh prune this image's superseded builds and nothing else.
LABEL mucode.sandbox.image="worker"

COPY *.py /opt/mucode-sandbox/worker/
# Byte-code compiled at build time: the root file system is read-only at run time.
RUN python3 -m compileall -q /opt/mucode-sandbox/worker \
    && chmod -R a+rX /opt/mucode-sandbox

WORKDIR /opt/mucode-sandbox
USER 65534:65534
CMD ["python3", "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from worker.main import main; sys.exit(main(sys.argv[2:]))", "/opt/mucode-sandbox", "--mode", "container"]
