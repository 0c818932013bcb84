#!/bin/bash
# A streaming replica: clone the primary once with pg_basebackup, then run as a standby.
set -euo pipefail
PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  export PGPASSWORD="$REPLICATION_PASSWORD"
  # TLS to the primary, its certificate checked (pg_basebackup -R keeps these in
  # primary_conninfo, so streaming is verified too).
  export PGSSLMODE=verify-full PGSSLROOTCERT=/certs/ca.crt
  until pg_isready -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
  gosu postgres pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" \
    --wal-method=stream --write-recovery-conf --slot="$SLOT_NAME" --progress
  chmod 700 "$PGDATA"
fi
unset PGPASSWORD REPLICATION_PASSWORD
exec gosu postgres postgres -D "$PGDATA" \
  -c config_file=/etc/postgresql/postgresql.conf -c hba_file=/etc/postgresql/pg_hba.conf
