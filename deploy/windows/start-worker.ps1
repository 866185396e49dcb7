# Start a trainfarm worker on a Windows GPU machine (run from the trainfarm checkout).
# One-time setup:  conda env create -f environment.worker.yml ; conda activate trainfarm-worker ; pip install --no-deps -e .
$env:TRAINFARM_REDIS_URL = "redis://master-host:6379/0"
$env:TRAINFARM_S3_ENDPOINT = "http://truenas-host:9000"
$env:TRAINFARM_S3_ACCESS_KEY = "trainfarm"
$env:TRAINFARM_S3_SECRET_KEY = "change-me"
$env:TRAINFARM_ENVIRONMENT = "production"
# Windows has no fork: use the solo pool (one job at a time) or threads.
celery -A worker worker -Q gpu -P solo -l info
