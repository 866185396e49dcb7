"""Everything the master connects to, created once at start-up and handed to routes and loops."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from sqlalchemy import Engine

from master.auth.callers import Authenticator
from master.auth.rate_limits import RateLimits
from master.auth.sessions import SessionCookies, session_secret
from master.connection_cap import ConnectionCap
from master.dispatch import Dispatcher, make_publisher
from master.fairshare.admitter import Admitter
from master.fairshare.usage import UsageMeter
from master.log_hub import LogHub, job_statuses
from master.logs import LogReader
from master.placement import Capacities
from master.published_marks import PublishedMarks
from shared.redis_client import make_async_redis, make_redis
from shared.settings import Settings
from shared.signing import Signer, master_private_key
from shared.storage import ArtifactStore, make_s3_client


@dataclass
class MasterState:
    settings: Settings
    engine: Engine
    broker: redis.Redis
    aredis: aioredis.Redis
    store: ArtifactStore
    dispatcher: Dispatcher
    logs: LogReader
    #: Every live-log stream's one reader; started and stopped with the app.
    hub: LogHub
    #: Open live-log streams per client.
    stream_cap: ConnectionCap
    capacities: Capacities
    auth: Authenticator
    #: Decides which waiting jobs start (fair share); started and stopped with the app.
    admitter: Admitter
    #: Charges ended attempts to their owners' usage.
    meter: UsageMeter

    @classmethod
    def connect(cls, settings: Settings, engine: Engine) -> MasterState:
        broker = make_redis(settings, socket_timeout=10)
        aredis = make_async_redis(settings)
        store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
        limits = RateLimits(
            settings.redis_connection_url(),
            broker,
            aredis,
            settings.rate_limit_mutations_per_minute,
            settings.rate_limit_failed_logins_per_minute,
            settings.rate_limit_window,
        )
        cookies = SessionCookies(session_secret(settings), settings.session_ttl)
        metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        dispatcher = Dispatcher(
            make_publisher(settings),
            PublishedMarks(engine),
            Signer(master_private_key(settings)),
            settings.message_max_age,
            broker,
            settings.node_offline_after,
        )
        meter = UsageMeter(settings.fairshare_half_life)
        return cls(
            settings=settings,
            engine=engine,
            broker=broker,
            aredis=aredis,
            store=store,
            dispatcher=dispatcher,
            logs=LogReader(aredis, store),
            # A client of its own: its one connection waits in XREAD, and must not be taken from the
            # pool the routes use.
            hub=LogHub(make_async_redis(settings), aredis, job_statuses(engine)),
            stream_cap=ConnectionCap(settings.sse_max_connections_per_client),
            capacities=Capacities(settings.node_offline_after),
            auth=Authenticator(engine, broker, aredis, cookies, limits, metrics_token),
            admitter=Admitter(engine, dispatcher, broker, settings, meter),
            meter=meter,
        )
