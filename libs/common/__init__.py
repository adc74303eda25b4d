"""Code shared by every driftloop service: events, topics, settings, Kafka, PostgreSQL,
the transactional outbox, the artifact store, telemetry and errors.

No service imports another; what they share lives here.
"""
