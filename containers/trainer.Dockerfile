# GPU trainer image: runs the verifier and fine-tune stages under `accelerate launch`
# (DeepSpeed ZeRO-3 or FSDP, configs in containers/accelerate/).
#
# Build context: the repository root.
#   docker build -f containers/trainer.Dockerfile \
#       --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel \
#       -t mucode-trainer:latest .
# BASE_IMAGE must carry a CUDA build of the torch version pinned in pyproject.toml: pip
# then keeps it (a local label such as 2.13.0+cu128 satisfies ==2.13.0) instead of
# fetching another build. A -devel image, because DeepSpeed compiles its CUDA ops on first
# use with nvcc. The project is installed editable from /opt/mucode so that
# mucode.training finds containers/accelerate/*.yaml beside the code.
# Run with GPUs, e.g.:
#   docker run --gpus all --ipc=host -v $PWD/runs:/opt/mucode/runs mucode-trainer:latest \
#       mucode stage finetune ...
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

# DeepSpeed is not pinned in pyproject.toml; pin it here for a reproducible image.
ARG DEEPSPEED_SPEC=deepspeed
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    DS_BUILD_OPS=0 \
    HF_HOME=/cache/huggingface \
    MUCODE_CACHE=/cache/mucode

WORKDIR /opt/mucode
COPY pyproject.toml README.md ./
COPY mucode ./mucode
COPY data ./data
COPY tasks ./tasks
COPY flows ./flows
COPY configs ./configs
COPY containers/accelerate ./containers/accelerate

RUN python -c "import torch; assert torch.version.cuda, 'BASE_IMAGE has a CPU-only torch: use a CUDA image'" \
    && pip install -e . "${DEEPSPEED_SPEC}" \
    && python -c "import deepspeed, mucode.training, trl; print('trainer image ok')"

CMD ["mucode", "--help"]
