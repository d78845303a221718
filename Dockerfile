# One image for every process of the service (api, worker, migrate); docker-compose.yml
# chooses the command.
FROM python:3.11-slim
WORKDIR /app
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
RUN pip install --no-cache-dir . && useradd --system assistant
USER assistant
ENV LOG_FORMAT=json
CMD ["assistant", "api", "--host", "0.0.0.0", "--port", "8000"]
