"""Maintenance jobs: expiry sweep (clean), garbage collection (gc), whitelist re-signing (resign).

Each job is a library function over one :class:`~runtime.repository.Repository` that returns a
result with numbers; the same function backs the CLI (``python -m runtime clean|gc|resign|
housekeeping``), the server's admin routes (``runtime/server/admin.py``) and the scheduler.
Jobs of one kind never overlap on one repository, across threads and processes
(:mod:`runtime.maintenance.joblock`).
"""
