"""Launchers for the farm's backing services (Redis, S3, PostgreSQL) as local child processes."""

from trainfarm.services.postgres import PostgresServer
from trainfarm.services.process import ManagedProcess, free_port, free_ports
from trainfarm.services.redis_server import RedisServer
from trainfarm.services.seaweed import SeaweedS3

__all__ = ["ManagedProcess", "PostgresServer", "RedisServer", "SeaweedS3", "free_port", "free_ports"]
