"""Move Pub/Sub messages into Celery chains: at least once in, exactly once out.

``handling`` decides what one message becomes (enqueued, duplicate, dead
letter, or retry later); ``dedup`` holds the durable claims; ``runner`` pulls
the subscriptions and acks or nacks; ``metrics`` counts outcomes.
"""
