# prodg/dagster: the Dagster webserver and daemon, no user code (the code location is its own image, reached over
# gRPC). Built by docker/prod/build.sh: packages come only from the wheelhouse in the build context.
ARG BASE_IMAGE=prodg/base:bookworm
FROM ${BASE_IMAGE} AS venv
COPY wheelhouse/ /tmp/wheelhouse/
# Debian's python3 has no ensurepip: the venv starts without pip, and pip installs itself from its own wheel.
RUN python3 -m venv --without-pip /opt/dagster/venv \
 && set -- /tmp/wheelhouse/pip-*.whl \
 && /opt/dagster/venv/bin/python "$1/pip" install -q --no-index --find-links /tmp/wheelhouse pip \
 && /opt/dagster/venv/bin/pip install -q --no-index --find-links /tmp/wheelhouse -c /tmp/wheelhouse/constraints.txt \
      dagster==1.13.27 dagster-webserver==1.13.27 dagster-postgres==0.29.27 dagster-docker==0.29.27 \
      -r /tmp/wheelhouse/extra-requirements.txt

FROM ${BASE_IMAGE}
ARG IMAGE
LABEL org.opencontainers.image.title="prodg/dagster" \
      org.opencontainers.image.description="Dagster webserver + daemon for prodg"
COPY --from=venv /opt/dagster/venv /opt/dagster/venv
COPY dagster.yaml workspace.yaml /opt/dagster/dagster_home/
ENV PATH=/opt/dagster/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dagster/dagster_home
EXPOSE 3000
# The daemon runs the same image with `dagster-daemon run -w workspace.yaml`.
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/dagster_home/workspace.yaml"]
