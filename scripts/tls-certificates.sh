#!/usr/bin/env bash
# Makes a throwaway cluster CA and certificates signed by it, for trying TLS on loopback and for the
# tests (which run it into a temporary directory). Not for production: keys are unencrypted and
# the certificates last --days days (default 7).
#   scripts/tls-certificates.sh DIR [--days N]
# Writes into DIR (created if missing), each certificate PEM beside its key (EC P-256):
#   ca.pem, ca.key            the cluster CA (--tls-ca-file)
#   node.pem, node.key        a node's certificate (--tls-cert-file, --tls-key-file): subjectAltName
#                             DNS:localhost and IP:127.0.0.1, usable as server and as client (nodes
#                             present it to each other when --tls-client-auth is on)
#   client.pem, client.key    a client's certificate (curl --cert/--key) for --tls-client-auth
#   other-ca.pem, other-ca.key               a second, unrelated CA
#   other-client.pem, other-client.key       a client certificate that CA signed (refused by nodes)
# Needs the openssl command (Debian's openssl package; scripts/install-deps.sh --tests installs it).
set -euo pipefail
directory="${1:?usage: scripts/tls-certificates.sh DIR [--days N]}"
days=7
if [ "${2:-}" = "--days" ]; then days="${3:?--days needs a number}"; fi
command -v openssl >/dev/null || { echo "tls-certificates.sh: the openssl command is missing (apt-get install openssl, or scripts/install-deps.sh --tests)" >&2; exit 1; }
mkdir -p "$directory"
cd "$directory"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME SUBJECT
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days "$days" -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf NAME SUBJECT CA EXTENSIONS
leaf() {
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -out "$1.pem" -days "$days" \
    -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "/CN=Caucus test cluster CA"
leaf node "/CN=caucus-node" ca $'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1'
leaf client "/CN=caucus-client" ca "extendedKeyUsage=clientAuth"
ca other-ca "/CN=Some other CA"
leaf other-client "/CN=other-client" other-ca "extendedKeyUsage=clientAuth"
rm -f ./*.srl
chmod 600 ./*.key
echo "certificates in $directory: ca.pem node.pem/node.key client.pem/client.key other-ca.pem other-client.pem/other-client.key"
