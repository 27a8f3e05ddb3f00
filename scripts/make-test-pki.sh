#!/usr/bin/env bash
# A throwaway PKI for tests and the TLS gate (never commit its keys): a CA, a server certificate for
# localhost and 127.0.0.1, a client certificate, and an unrelated self-signed certificate, with the
# extensions strict verifiers ask for (key usage, extended key usage, positive serials).
#
#   scripts/make-test-pki.sh DIR
set -euo pipefail
d=$1
mkdir -p "$d"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.pem" -days 30 -subj /CN=Keel-Test-CA -set_serial 1 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
leaf() {  # NAME SUBJECT SAN USAGE SERIAL
    openssl req "${ec[@]}" -keyout "$d/$1.key" -out "$d/$1.csr" -subj "$2" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$4" "$3" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -set_serial "$5" -days 30 -sha256 \
        -extfile "$d/$1.ext" -out "$d/$1.pem" 2>/dev/null
}
leaf server /CN=localhost DNS:localhost,IP:127.0.0.1 serverAuth 2
leaf client /CN=test-client/O=Keel DNS:client.keel.test clientAuth 3
openssl req -x509 "${ec[@]}" -keyout "$d/other.key" -out "$d/other.pem" -days 30 -subj /CN=localhost -set_serial 4 \
    -addext subjectAltName=DNS:localhost 2>/dev/null
