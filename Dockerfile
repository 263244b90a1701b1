# The connector as a container: slim Python, a non-root user, PORT respected, /health checked.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
COPY requirements.txt .
# uvloop comes with requirements.txt on Linux (EVENT_LOOP=auto picks it up).
RUN pip install -r requirements.txt

COPY *.py ./
RUN useradd --system --uid 10001 --no-create-home connector
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]

# SIGTERM drains calls in progress (SHUTDOWN_DRAIN_SECONDS); give the platform's stop timeout room.
STOPSIGNAL SIGTERM
CMD ["python", "oai_middleware.py"]
