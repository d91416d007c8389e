"""Bulk jobs: classify an S3 prefix, a manifest, stored images or an uploaded archive
asynchronously, on ``imageiq worker`` processes fed by a Celery task queue (docs/jobs.md).

:mod:`~imageiq.jobs.submit` checks and records a job, :mod:`~imageiq.jobs.tasks` runs its
chunks through :mod:`~imageiq.jobs.bulk` (the model batched in-process, no HTTP), and
:mod:`~imageiq.jobs.ledger` keeps every answer exactly once in the metadata database.
"""
