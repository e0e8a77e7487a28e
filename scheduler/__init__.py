"""The scheduler process (`python -m scheduler`): scheduling passes, the reconciler, a status block.

Several scheduler processes may run at once: a pass claims due tasks with `FOR UPDATE SKIP
LOCKED` and `UNIQUE (task_id, scheduled_for)` makes a repeated slot a no-op, so no slot ever gets
two runs; the reconciler takes a Postgres advisory lock, so one reconciles at a time.
"""
