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
# The worker and its jobs run as trainfarm (uid 1000), never root: a job that breaks out of its
# process reaches only this user's work and cache dirs. A fresh volume at TRAINFARM_DATA_DIR takes
# this ownership; one made by an earlier root image needs `chown -R 1000:1000` once.
# For the Docker backend, mount the host's /var/run/docker.sock and add the socket's group at run
# time (compose `group_add: ["${DOCKER_GID}"]`, `docker run --group-add $(stat -c %g
# /var/run/docker.sock)`); the host's engine resolves the attempt dirs' bind mounts on the host, so
# TRAINFARM_DATA_DIR must be a host folder bound at the same path. Job containers run as 1000:1000.
# The socket's group can start any container: it is root on the host, so keep it off shared nodes.
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/trainfarm --shell /usr/sbin/nologin trainfarm \
    && install -d -o trainfarm -g trainfarm /var/lib/trainfarm
ENV TRAINFARM_DATA_DIR=/var/lib/trainfarm
USER trainfarm:trainfarm
CMD ["celery", "-A", "worker", "worker", "-Q", "gpu", "-c", "1", "-l", "info"]
