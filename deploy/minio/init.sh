#!/bin/sh
# The stack's minio-init (deploy/stack.yml): the bucket, the master's and the workers' MinIO users
# and their policies, made at every start and harmless to repeat, as docker-compose.yml's
# minio-init does. The policies are the files beside this one, mounted as Docker configs.
set -eu
policies=/etc/trainfarm/minio
# A swarm starts services in no order (no depends_on): wait for MinIO, then give up to the
# restart policy rather than loop forever.
tries=0
until mc alias set farm http://minio:9000 "$MINIO_ROOT_USER" "$(cat /run/secrets/minio_root_password)" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then echo "MinIO at http://minio:9000 did not answer" >&2; exit 1; fi
  sleep 2
done
mc mb --ignore-existing farm/trainfarm
for who in master worker; do
  mc admin policy create farm "trainfarm-$who" "$policies/trainfarm-$who.json"
  mc admin user add farm "trainfarm-$who" "$(cat "/run/secrets/s3_${who}_secret_key")"
  # Attaching twice is an error in mc; the second start of the stack must not fail on it.
  out=$(mc admin policy attach farm "trainfarm-$who" --user "trainfarm-$who" 2>&1) ||
    echo "$out" | grep -qi "already" || { echo "$out" >&2; exit 1; }
done
echo "MinIO users trainfarm-master and trainfarm-worker are ready"
