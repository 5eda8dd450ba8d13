#!/usr/bin/env bash
# Builds tests/data/store-v1.tar.gz: a data_dir written by ferry at commit
# 9345624 (store format 1: one record per sled value), for the upgrade tests
# (src/store/upgrade_tests.rs, tests/upgrade.rs).
#
# Usage: scripts/make-v1-store.sh <ferry binary built at 9345624> <output .tar.gz>
# Needs mosquitto, mosquitto_pub. Traffic on 127.0.0.1 only.
#
# What it holds:
# - queue edge0/out: 150 messages `v1-edge0-0`..`v1-edge0-149` on `down/e0/<n>`,
#   QoS 1, MQTT 5 user property k=v; the edge was never reachable;
# - queue edge1/out: `v1-edge1-0`..`v1-edge1-99` delivered (forwarded 100),
#   then the edge stopped and `v1-edge1-100`..`v1-edge1-249` queued on `down/e1/<n>`.
set -euo pipefail
FERRY=$1
OUT=$(realpath -m "$2")
WORK=$(mktemp -d /tmp/ferry-make-v1.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HUB=$(port); EDGE1=$(port); DEAD=$(port)
for p in $HUB $EDGE1; do
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$p" > "$WORK/m$p.conf"
done
mosquitto -c "$WORK/m$HUB.conf" > "$WORK/hub.log" 2>&1 &
mosquitto -c "$WORK/m$EDGE1.conf" > "$WORK/edge1.log" 2>&1 & EDGE1_PID=$!
sleep 0.5
cat > "$WORK/ferry.toml" <<TOML
data_dir = "$WORK/data"
[metrics]
listen = "off"
[admin]
listen = "off"
[hub]
host = "127.0.0.1"
port = $HUB
[defaults]
reconnect_max_ms = 500
[[links]]
name = "edge0"
host = "127.0.0.1"
port = $DEAD
[[links.routes]]
direction = "out"
local = "edge/0/down/#"
remote = "down/#"
qos = 1
[[links]]
name = "edge1"
host = "127.0.0.1"
port = $EDGE1
[[links.routes]]
direction = "out"
local = "edge/1/down/#"
remote = "down/#"
qos = 1
TOML
"$FERRY" run --config "$WORK/ferry.toml" > "$WORK/ferry.log" 2>&1 & FERRY_PID=$!
sleep 3
mosquitto_sub -h 127.0.0.1 -p "$EDGE1" -t 'down/#' -C 100 -q 1 > "$WORK/delivered" &
SUB=$!
sleep 0.5
for n in $(seq 0 99); do
  mosquitto_pub -h 127.0.0.1 -p "$HUB" -q 1 -t "edge/1/down/e1/$n" -m "v1-edge1-$n"
done
wait $SUB
echo "delivered to edge1: $(wc -l < "$WORK/delivered")"
kill $EDGE1_PID; wait $EDGE1_PID 2>/dev/null || true
sleep 1
for n in $(seq 100 249); do
  mosquitto_pub -h 127.0.0.1 -p "$HUB" -q 1 -t "edge/1/down/e1/$n" -m "v1-edge1-$n"
done
for n in $(seq 0 149); do
  mosquitto_pub -V mqttv5 -D publish user-property k v -h 127.0.0.1 -p "$HUB" -q 1 -t "edge/0/down/e0/$n" -m "v1-edge0-$n"
done
sleep 3
kill -TERM $FERRY_PID; wait $FERRY_PID || true
"$FERRY" queue stats --config "$WORK/ferry.toml"
du -sh "$WORK/data"
tar -C "$WORK" -czf "$OUT" data
ls -l "$OUT"
