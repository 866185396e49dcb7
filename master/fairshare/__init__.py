"""Fair share: which queued jobs may start now, decided by the master.

A job's attempt is published to its Celery queue only once admission lets it start, so the queues
hold only work that may run now. The pieces, each in its own module:

- `usage`: device-seconds per user and queue, decayed with a half-life (Slurm's fair-share usage);
- `capacity`: what the online nodes offer per queue, from their heartbeats;
- `caps`: per-user limits (farm defaults in settings, admins' overrides in `user_limits`);
- `waiting`: the waiting jobs, held in memory by queue and user, loaded from the database;
- `decide`: the decision itself, a pure function of the above;
- `preemption`: which running jobs to stop for a job of higher priority;
- `reasons`: the sentence a person reads on a waiting job;
- `admitter`: the thread that runs a decision whenever something changes and acts on it.
"""
