#!/usr/bin/env bash
# Writes seed corpora for both fuzz targets into DIR (default: fuzz/seeds,
# which is gitignored):
#   DIR/frame/          every message, bare and framed (examples/frame_seeds.rs)
#   DIR/cert_identity/  DER certificates: real ones from `hq init` and
#                       `hq cert issue`, and odd ones made with openssl
#                       (no SAN, DNS SAN only, two SPIFFE ids, bad ids).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:-$here/seeds}"
mkdir -p "$out/frame" "$out/cert_identity"
out="$(cd "$out" && pwd)"

(cd "$here" && cargo run -q -j 2 --example frame_seeds -- "$out/frame")

(cd "$root" && cargo build -q -j 2 --bin hq)
hq="$root/target/debug/hq"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$hq" init --data-dir "$tmp/hq" --trust-domain fuzz.example >/dev/null
for role in relay agent admin; do
    "$hq" cert issue --data-dir "$tmp/hq" --role "$role" --name "${role}1" --out "$tmp/$role" >/dev/null
    openssl x509 -in "$tmp/$role/node.crt" -outform der -out "$out/cert_identity/hq-$role.der"
done
# The CA's own certificate (spiffe://<trust-domain> only), and HQ's and admin's.
openssl x509 -in "$tmp/agent/ca.crt" -outform der -out "$out/cert_identity/hq-ca.der"
find "$tmp/hq" -name node.crt | sort | while read -r crt; do
    base="$(basename "$(dirname "$crt")")-$(basename "$crt" .crt)"
    openssl x509 -in "$crt" -outform der -out "$out/cert_identity/hqdir-$base.der"
done

# Self-signed certificates with unusual subject alternative names.
mk() { # name, extra openssl req args...
    local name="$1"
    shift
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$tmp/k.pem" -subj /CN=fuzz -days 1 -outform der \
        -out "$out/cert_identity/$name.der" "$@" 2>/dev/null
}
mk no-san
mk dns-san -addext "subjectAltName=DNS:relay.example"
mk two-spiffe -addext "subjectAltName=URI:spiffe://td/agent/a,URI:spiffe://td/agent/b"
mk upper-scheme -addext "subjectAltName=URI:spiffe://td/agent/a,URI:SPIFFE://td/relay/b"
mk bad-role -addext "subjectAltName=URI:spiffe://td/king/a"
mk bad-name -addext "subjectAltName=URI:spiffe://td/agent/A_B"
mk extra-path -addext "subjectAltName=URI:spiffe://td/agent/a/b"
mk bad-domain -addext "subjectAltName=URI:spiffe://T..D/agent/a"
mk mixed-san -addext "subjectAltName=DNS:x,email:a@b,IP:127.0.0.1,URI:https://x/y,URI:spiffe://td.example/relay/r-1"
mk ok-ec -addext "subjectAltName=URI:spiffe://td.example/agent/c1"
echo "seeds in $out: $(ls "$out/frame" | wc -l) frame, $(ls "$out/cert_identity" | wc -l) cert_identity"
