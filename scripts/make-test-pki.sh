#!/usr/bin/env bash
# A throwaway PKI for tests and the TLS gate (never commit its keys): a CA, a server certificate for
# localhost and 127.0.0.1, another for alt.keel.test and *.wild.keel.test (SNI), a client certificate,
# an unrelated self-signed certificate, a two-level chain and weak certificates, with the
# extensions strict verifiers ask for (key usage, extended key usage, positive serials).
#
#   scripts/make-test-pki.sh DIR
set -euo pipefail
d=$1
mkdir -p "$d"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.pem" -days 90 -subj /CN=Keel-Test-CA -set_serial 1 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
leaf() {  # NAME SUBJECT SAN USAGE SERIAL
    openssl req "${ec[@]}" -keyout "$d/$1.key" -out "$d/$1.csr" -subj "$2" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$4" "$3" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -set_serial "$5" -days 90 -sha256 \
        -extfile "$d/$1.ext" -out "$d/$1.pem" 2>/dev/null
}
leaf server /CN=localhost DNS:localhost,IP:127.0.0.1 serverAuth 2
leaf client /CN=test-client/O=Keel DNS:client.keel.test clientAuth 3
leaf alt /CN=alt.keel.test DNS:alt.keel.test,DNS:*.wild.keel.test serverAuth 9
openssl req -x509 "${ec[@]}" -keyout "$d/other.key" -out "$d/other.pem" -days 90 -subj /CN=localhost -set_serial 4 \
    -addext subjectAltName=DNS:localhost 2>/dev/null
# A two-level chain: an intermediate CA under the test CA, and a leaf for localhost under it.
openssl req "${ec[@]}" -keyout "$d/intermediate.key" -out "$d/intermediate.csr" -subj /CN=Keel-Test-Intermediate 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$d/intermediate.ext"
openssl x509 -req -in "$d/intermediate.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -set_serial 5 -days 90 -sha256 \
    -extfile "$d/intermediate.ext" -out "$d/intermediate.pem" 2>/dev/null
openssl req "${ec[@]}" -keyout "$d/leaf.key" -out "$d/leaf.csr" -subj /CN=localhost 2>/dev/null
openssl x509 -req -in "$d/leaf.csr" -CA "$d/intermediate.pem" -CAkey "$d/intermediate.key" -set_serial 6 -days 90 -sha256 \
    -extfile "$d/server.ext" -out "$d/leaf.pem" 2>/dev/null
cat "$d/leaf.pem" "$d/intermediate.pem" >"$d/chain.pem"                 # in order
cat "$d/leaf.pem" "$d/ca.pem" "$d/intermediate.pem" >"$d/unordered.pem"  # out of order
# Weak certificates for the diagnostics: signed with MD5 and SHA-1, and a 1024-bit RSA key.
for weak in md5 sha1; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/$weak.key" -out "$d/$weak.pem" -days 90 -subj /CN=localhost \
        -"$weak" -set_serial 7 2>/dev/null
done
openssl req -x509 -newkey rsa:1024 -nodes -keyout "$d/rsa1024.key" -out "$d/rsa1024.pem" -days 90 -subj /CN=localhost \
    -set_serial 8 2>/dev/null
