# prodg/dagster-code: prodg's code location (prodg_assets + definitions.py and their dependencies), served over
# gRPC on port 4000 by a code server that can reload it. DockerRunLauncher starts every run in a container of this same image (DAGSTER_CURRENT_IMAGE).
# config/ is not baked in: the config repo is mounted (PRODG_REPO) or mirrored from PRODG_REPO_URL.
# Built by docker/prod/build.sh: Python packages only from the wheelhouse, git only from the .debs in the context.
ARG BASE_IMAGE=prodg/base:bookworm
FROM ${BASE_IMAGE} AS venv
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv --without-pip /opt/dagster/venv \
 && set -- /tmp/wheelhouse/pip-*.whl \
 && /opt/dagster/venv/bin/python "$1/pip" install -q --no-index --find-links /tmp/wheelhouse pip \
 && /opt/dagster/venv/bin/pip install -q --no-index --find-links /tmp/wheelhouse -c /tmp/wheelhouse/constraints.txt \
      -r /tmp/wheelhouse/requirements.txt
# The project last, so a code change reuses the dependency layer above. setuptools (its build backend) also comes
# from the wheelhouse: pip passes --no-index/--find-links on to the isolated build.
COPY src/ /tmp/src/
RUN /opt/dagster/venv/bin/pip install -q --no-index --find-links /tmp/wheelhouse --no-deps /tmp/src

FROM ${BASE_IMAGE}
ARG IMAGE
# The one repository git may read when another user owns it: the config repo's mount (PRODG_REPO in the Compose
# files). Never '*': root with the Docker socket must not run git in a repository someone else prepared.
ARG PRODG_REPO=/opt/prodg/repo
LABEL org.opencontainers.image.title="prodg/dagster-code" \
      org.opencontainers.image.description="prodg's Dagster code location"
COPY .debs/ /tmp/debs/
# git reads the config repo; the repo is mounted from the host, often owned by another uid than the container's.
RUN dpkg -i /tmp/debs/*.deb >/dev/null && rm -rf /tmp/debs \
 && git config --system --add safe.directory "$PRODG_REPO"
COPY --from=venv /opt/dagster/venv /opt/dagster/venv
COPY dagster.yaml /opt/dagster/dagster_home/
COPY src/definitions.py /opt/dagster/app/
ENV PATH=/opt/dagster/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_CURRENT_IMAGE=${IMAGE} \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dagster/app
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s --retries=3 \
  CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
# `code-server start`, not `api grpc`: it reloads its definitions in place when asked (a push that changes the
# asset graph; prodg_assets/gitops/reload.py), and the webserver and the daemon follow its new server id.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-f", "definitions.py"]
