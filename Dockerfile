# podgate controller + webhook.   docker build -t podgate:0.1.0 .
# (Not built by the tests: no container engine runs on the development machines.)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# the product only: src/podgate_sandbox (the sandbox distribution) never enters the image
COPY src/podgate ./src/podgate
# the cloud providers' SDKs are extras: the image carries both, so one image serves every provider
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[aws,alibaba]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "podgate[aws,alibaba]" && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["podgate"]
CMD ["controller", "--help"]
