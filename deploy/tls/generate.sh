#!/bin/sh
# Generates a private CA and one certificate per service for a LOCAL deployment (compose's
# one-shot `certs` service runs it; `deno task cluster` and the tests do the same). Idempotent:
# existing files are kept, so restarts do not rotate them. Production: use your own CA.
#
#   generate.sh OUT_DIR NAME[,SAN...] ...
#   e.g. generate.sh /certs nginx,localhost,127.0.0.1 postgres,pg-primary,pg-replica-1
#
# Each NAME gets NAME.crt / NAME.key (0600, owner: OWNER_UID:OWNER_GID when set), valid for
# NAME and every SAN after it (IPv4-looking SANs become IP SANs); every client verifies
# against ca.crt. The CA's key is deleted once the certificates exist (KEEP_CA_KEY=1 keeps
# it), so no service that mounts the directory can issue more.
set -eu
out=${1:?usage: generate.sh OUT_DIR NAME[,SAN...] ...}
shift
mkdir -p "$out"
umask 077
days=${CERT_DAYS:-825}
if [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -subj "/CN=RootStream local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
fi
for spec in "$@"; do
  name=${spec%%,*}
  [ -s "$out/$name.crt" ] && continue
  if [ ! -s "$out/ca.key" ]; then
    echo "generate.sh: $out/$name.crt is missing and the CA key is gone; remove $out to start over" >&2
    exit 1
  fi
  sans=""
  for san in $(echo "$spec" | tr ',' ' '); do
    case "$san" in
      *[!0-9.]*) sans="$sans,DNS:$san" ;;
      *) sans="$sans,IP:$san" ;;
    esac
  done
  sans=${sans#,}
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" \
    -keyout "$out/$name.key" -out "$out/$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$sans" >"$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile "$out/$name.ext" -out "$out/$name.crt" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
done
[ "${KEEP_CA_KEY:-0}" = 1 ] || rm -f "$out/ca.key" "$out/ca.srl"
chmod 0644 "$out"/*.crt
chmod 0755 "$out"
if [ -n "${OWNER_UID:-}" ]; then
  chown "${OWNER_UID}:${OWNER_GID:-$OWNER_UID}" "$out"/*.key
fi
echo "certificates in $out: $(cd "$out" && ls ./*.crt | tr '\n' ' ')"
