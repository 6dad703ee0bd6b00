# podgate controller + webhook.   docker build -t podgate:0.1.0 .
# Without a Docker engine: `make image` builds it with buildah on a base made from Debian's own
# packages (BASE: Python 3.11 and pip, podgate_sandbox.image) and writes dist/podgate-image.tar.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# the product only: src/podgate_sandbox (the sandbox distribution) never enters the image
COPY src/podgate ./src/podgate
# the cloud providers' SDKs are extras: the image carries both, so one image serves every provider
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[aws,alibaba]"

FROM ${BASE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "podgate[aws,alibaba]" && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["podgate"]
CMD ["controller", "--help"]
