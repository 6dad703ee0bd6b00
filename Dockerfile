# podgate controller + webhook.
#   docker build --build-arg BASE=IMAGE@sha256:DIGEST --build-arg BUILD_BASE=IMAGE@sha256:DIGEST -t podgate:0.1.0 .
# Both bases pinned, by digest with a Docker engine: BUILD_BASE with Python 3.11 and pip, BASE the
# same Python release without pip (the virtualenv built on one runs on the other; the official
# python image's pip is removed below). Without a Docker engine `make image` builds this with
# buildah on two Debian bases made by mmdebstrap at the exact package versions of
# image/debian-runtime.lock and image/debian-build.lock (podgate_sandbox.image).
# Python dependencies: image/requirements.txt, every version and file hash pinned (pip-tools;
# `make image-lock`), installed with --require-hashes.
ARG BASE
ARG BUILD_BASE

FROM ${BUILD_BASE} AS build
WORKDIR /src
COPY image/requirements.txt image/build-requirements.txt ./image/
# The locked files, each checked against its hash; a dependency published only as a source
# archive is built here with the locked setuptools, never with an unpinned build environment.
RUN python3 -m venv --without-pip /opt/build \
 && python3 -m pip --python /opt/build/bin/python install --no-cache-dir --require-hashes --no-deps \
      -r image/build-requirements.txt \
 && python3 -m pip --python /opt/build/bin/python wheel --no-cache-dir --require-hashes --no-deps \
      --no-build-isolation --wheel-dir /wheels -r image/requirements.txt
COPY pyproject.toml README.md ./
# the product only: src/podgate_sandbox (the sandbox distribution) never enters the image
COPY src/podgate ./src/podgate
RUN python3 -m pip --python /opt/build/bin/python wheel --no-cache-dir --no-deps --no-build-isolation \
      --no-index --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/podgate \
 && python3 -m pip --python /opt/podgate/bin/python install --no-cache-dir --no-deps --no-index \
      /wheels/*.whl

FROM ${BASE}
COPY --from=build /opt/podgate /opt/podgate
# No package installer in the runtime image: the Debian base has none, an official python image's
# goes. `podgate` is also on the default PATH of runtimes that do not apply the image's ENV.
RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall -y -q pip setuptools wheel; fi \
 && ln -s /opt/podgate/bin/podgate /usr/local/bin/podgate
ENV PATH=/opt/podgate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["podgate"]
CMD ["controller", "--help"]
