# The transferops environment (the locked dependencies and this checkout), for the services of
# docker-compose.yml: MLflow and Prefect servers, Dask scheduler and workers, and the flows.
FROM python:3.11-slim
WORKDIR /opt/transferops
COPY requirements.lock requirements-nodeps.lock pyproject.toml ./
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache -r requirements.lock \
 && uv pip install --system --no-cache --no-deps -r requirements-nodeps.lock
COPY flows flows
COPY tasks tasks
COPY bench bench
RUN uv pip install --system --no-cache --no-deps -e . && python -m compileall -q -j 0 flows tasks
# Every process sees the project (data, params.yaml, the feature cache) at the same path.
WORKDIR /project
