"""Developer tooling: the embedded PostgreSQL and Kafka-compatible broker that
`driftloop up`, the demo and the tests run on. Services never import it."""
