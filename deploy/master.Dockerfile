# The master (and Flower): no torch, so the image stays small.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY master master
COPY worker worker
COPY trainfarm trainfarm
RUN pip install --no-cache-dir ".[postgres,standalone]"
USER nobody
EXPOSE 8000
CMD ["uvicorn", "master.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
