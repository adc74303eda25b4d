#!/usr/bin/env bash
# compose's bundled Kafka broker (apache/kafka image): one KRaft node whose only listener on the
# network is TLS with SCRAM-SHA-512 authentication. The controller and an inter-broker listener
# are bound to localhost inside the container. The TLS keystore and the users' passwords come from
# the `secrets` service (libs/common/compose_secrets.py) on the broker's own volume; nothing
# secret is in this file or in compose.yaml.
set -euo pipefail

# Paths as in the image and compose.yaml (overridable so tests/unit/test_deploy.py can run this offline).
secrets=${DRIFTLOOP_BROKER_SECRETS:-/run/driftloop/broker}
bin=${KAFKA_HOME:-/opt/kafka}/bin
config=${DRIFTLOOP_BROKER_CONFIG:-${KAFKA_HOME:-/opt/kafka}/config/driftloop.properties}
ready=${DRIFTLOOP_BROKER_READY:-/tmp/driftloop-users-ready}
rm -f "$ready"

keystore_password=$(<"$secrets/keystore.password")
cat >"$config" <<PROPERTIES
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@localhost:9093
controller.listener.names=CONTROLLER
listeners=SASL_SSL://:9092,CONTROLLER://localhost:9093,INTERNAL://localhost:9094
advertised.listeners=SASL_SSL://kafka:9092,INTERNAL://localhost:9094
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$secrets/keystore.p12
ssl.keystore.password=$keystore_password
ssl.key.password=$keystore_password
ssl.enabled.protocols=TLSv1.3,TLSv1.2
log.dirs=${DRIFTLOOP_BROKER_DATA:-/var/lib/kafka/data}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
auto.create.topics.enable=false
PROPERTIES
chmod 600 "$config"

# Users are registered with the storage on the first start, and (again, idempotently) once the
# broker runs, so that users added to the secrets later, or a data volume from before, get them too.
users=()
while read -r name password; do
  [[ -n "$name" ]] && users+=("$name" "$password")
done <"$secrets/scram-users"
format_args=()
for ((i = 0; i < ${#users[@]}; i += 2)); do
  format_args+=(--add-scram "SCRAM-SHA-512=[name=${users[i]},password=${users[i + 1]}]")
done
"$bin/kafka-storage.sh" format --ignore-formatted --cluster-id "$("$bin/kafka-storage.sh" random-uuid)" \
  --config "$config" "${format_args[@]}"

"$bin/kafka-server-start.sh" "$config" &
broker=$!
trap 'kill -TERM "$broker"; wait "$broker"' TERM INT

until "$bin/kafka-broker-api-versions.sh" --bootstrap-server localhost:9094 >/dev/null 2>&1; do
  kill -0 "$broker" 2>/dev/null || exit 1
  sleep 2
done
for ((i = 0; i < ${#users[@]}; i += 2)); do
  "$bin/kafka-configs.sh" --bootstrap-server localhost:9094 --alter --entity-type users \
    --entity-name "${users[i]}" --add-config "SCRAM-SHA-512=[password=${users[i + 1]}]" >/dev/null
done
touch "$ready"
echo "driftloop: broker up, TLS + SCRAM-SHA-512 on :9092, $((${#users[@]} / 2)) users"
wait "$broker"
