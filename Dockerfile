# One image for every process of the service (api, worker, migrate); docker-compose.yml
# chooses the command. Two stages: wheels are built in the first, and only they are
# installed in the second, which runs as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY store store
COPY tools tools
COPY workflows workflows
COPY activities activities
COPY api api
COPY fakemodel fakemodel
COPY toolserver toolserver
COPY chat chat
COPY cli.py devstack.py devrun.py devmail.py worker.py ./
# With the observability extra: tracing and Sentry are then turned on by configuration alone.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[observability]"

FROM python:3.11-slim
RUN useradd --system --create-home assistant
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER assistant
WORKDIR /home/assistant
ENV LOG_FORMAT=json PYTHONUNBUFFERED=1
EXPOSE 8000 9100
CMD ["assistant", "api", "--host", "0.0.0.0", "--port", "8000"]
