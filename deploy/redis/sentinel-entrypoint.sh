#!/bin/sh
# A Sentinel: its private config from the template plus its passwords: `requirepass` (what
# clients such as the runtime, and the other Sentinels, must present: REDIS_SENTINEL_PASSWORD)
# and the data nodes' `sentinel` user password. Written by printf (a builtin): no password
# in any process's arguments; the file is 0600.
set -eu
: "${REDIS_SENTINEL_PASSWORD:?}" "${REDIS_SENTINEL_NODE_PASSWORD:?}"
umask 077
if [ ! -s /data/sentinel.conf ]; then
  cp /etc/sentinel/sentinel.conf.template /data/sentinel.conf
  {
    printf 'requirepass "%s"\n' "$REDIS_SENTINEL_PASSWORD"
    printf 'sentinel sentinel-pass "%s"\n' "$REDIS_SENTINEL_PASSWORD"
    printf 'sentinel auth-pass rootstream "%s"\n' "$REDIS_SENTINEL_NODE_PASSWORD"
  } >>/data/sentinel.conf
fi
chown -R redis:redis /data
unset REDIS_SENTINEL_PASSWORD REDIS_SENTINEL_NODE_PASSWORD
exec docker-entrypoint.sh redis-sentinel /data/sentinel.conf
