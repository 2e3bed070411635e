"""Task result store (status lifecycle, results by id, TTL, batch queries).

Not built yet: it is its own issue. Nothing imports this package today.
"""
