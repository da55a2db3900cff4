# CPU trainer image for the `*/docker` deployments, built with no network: the sandbox's
# Debian base (containers/build-base.sh) plus the Python packages of the host's virtualenv
# and this repository, both staged into the build context by containers/build-trainer.sh.
# (containers/trainer.Dockerfile is the GPU image; it installs from a registry.)
#
# Build context (made by build-trainer.sh): site-packages/ (the venv's, without the
# editable install of mucode) and repo/ (the tracked files of this checkout).
ARG BASE_IMAGE=mucode-base:bookworm
FROM ${BASE_IMAGE}
LABEL mucode.trainer.image="cpu"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_INDEX=1 \
    HF_HUB_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    OMP_WAIT_POLICY=PASSIVE \
    MUCODE_CACHE=/cache/mucode

# Debian's python3 reads /usr/local/lib/python3.X/dist-packages before its own packages.
ARG PYTHON_VERSION=3.11
COPY site-packages /usr/local/lib/python${PYTHON_VERSION}/dist-packages
COPY repo /opt/mucode
WORKDIR /opt/mucode
# Editable, so mucode.training finds containers/accelerate/*.yaml beside the code; the
# `prefect` command is what a Docker worker runs in the container (`prefect flow-run execute`).
RUN python3 -m pip install --quiet --no-deps --no-build-isolation --no-index --break-system-packages -e . \
    && printf '#!/usr/bin/python3\nimport sys\nfrom prefect.cli import app\nsys.exit(app())\n' >/usr/local/bin/prefect \
    && chmod 755 /usr/local/bin/prefect \
    && python3 -c "import mucode.flows.iteration, mucode.flows.stage, torch, transformers; print('trainer image ok')"

CMD ["prefect", "version"]
