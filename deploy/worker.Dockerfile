# A GPU compute node: CUDA-enabled torch from PyPI (Linux wheels carry CUDA) and the worker.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.txt
COPY shared shared
COPY master master
COPY worker worker
COPY trainfarm trainfarm
RUN pip install --no-cache-dir --no-deps .
ENV TRAINFARM_DATA_DIR=/var/lib/trainfarm
CMD ["celery", "-A", "worker", "worker", "-Q", "gpu", "-c", "1", "-l", "info"]
