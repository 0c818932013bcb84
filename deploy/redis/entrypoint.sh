#!/bin/sh
# A Redis data node: writes its ACL file (SHA-256 of each password, never the password) and
# the include with masterauth / replicaof, drops the passwords from the environment, then
# starts redis-server through the image's entrypoint (which runs it as the redis user).
# printf is a shell builtin: no password appears in any process's arguments.
set -eu
: "${REDIS_RUNTIME_PASSWORD:?}" "${REDIS_SENTINEL_NODE_PASSWORD:?}" "${REDIS_REPLICA_PASSWORD:?}"
umask 077
mkdir -p /run/redis
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
sed -e '/^#/d' -e '/^$/d' \
  -e "s/__RUNTIME_SHA256__/$(hash "$REDIS_RUNTIME_PASSWORD")/" \
  -e "s/__SENTINEL_SHA256__/$(hash "$REDIS_SENTINEL_NODE_PASSWORD")/" \
  -e "s/__REPLICA_SHA256__/$(hash "$REDIS_REPLICA_PASSWORD")/" \
  /etc/redis/users.acl.template >/run/redis/users.acl
printf 'masterauth "%s"\n' "$REDIS_REPLICA_PASSWORD" >/run/redis/node.conf
if [ -n "${REPLICA_OF:-}" ]; then printf 'replicaof %s 6379\n' "$REPLICA_OF" >>/run/redis/node.conf; fi
chown -R redis:redis /run/redis
unset REDIS_RUNTIME_PASSWORD REDIS_SENTINEL_NODE_PASSWORD REDIS_REPLICA_PASSWORD
exec docker-entrypoint.sh redis-server /usr/local/etc/redis/redis.conf
