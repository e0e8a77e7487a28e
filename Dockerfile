# agentsched: one image for the api, worker, scheduler and migrate services (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The project is installed as a regular (non-editable) package; its sources are then removed,
# so every process runs the installed code. What is left in the working directory is what the
# migrations need (alembic.ini and migrations/), found there by `agentsched migrate`.
COPY . /tmp/agentsched-src
RUN pip install /tmp/agentsched-src \
    && mkdir -p /srv/agentsched \
    && cp -r /tmp/agentsched-src/alembic.ini /tmp/agentsched-src/migrations /srv/agentsched/ \
    && rm -rf /tmp/agentsched-src \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin agentsched

WORKDIR /srv/agentsched
USER agentsched

EXPOSE 8000
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000"]
