"""Postgres, the record: accounts, keys, users, orders, every ledger entry, every usage row.

Redis stays the hot path (no Postgres call while a request is admitted or run); what must outlive
Redis is written here, by the admin paths (first, for credits) and by the archiver (from Redis).
"""
