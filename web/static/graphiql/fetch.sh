#!/usr/bin/env bash
# Vendors GraphiQL and the React it runs on into this folder, from the npm registry, so that
# GET /graphql works on a machine without internet. Pinned versions; each tarball is checked
# against the integrity (SHA-512) the registry publishes for it (`npm view PKG@VER
# dist.integrity`). Run from anywhere, then commit the result:
#   web/static/graphiql/fetch.sh && git add web/static/graphiql
set -euo pipefail
cd "$(dirname "$0")"
REGISTRY="${NPM_REGISTRY:-https://registry.npmjs.org}"

# package version integrity files-to-keep (paths inside the tarball's package/ folder)
PACKAGES=(
  "graphiql 3.8.3 sha512-cuPDYtXVKV86Pu5PHBX642Odi/uVEE2y1Jxq5rGO/Qy1G2lRp7ZZ7a/T30RzxhuLSWo9zUbzq0P3U49//H0Ugw== graphiql.min.js graphiql.min.css"
  "react 18.2.0 sha512-/3IjMdb2L9QbBdWiW5e3P2/npwMBaU9mHCSCUzNln0ZCYbcfTsGbTJrU/kGemdH2IWmB2ioZ+zkxtmq6g09fGQ== umd/react.production.min.js"
  "react-dom 18.2.0 sha512-6IMTriUmvsjHUjNtEDudZfuDQUoWXVxKHhlEGSk81n4YFS+r/Kl99wXiwlVXtPBtJenozv2P+hxDsw9eA7Xo6g== umd/react-dom.production.min.js"
)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: > VERSIONS
for entry in "${PACKAGES[@]}"; do
  read -r name version integrity files <<<"$entry"
  tarball="$work/$name.tgz"
  curl -fsSL "$REGISTRY/$name/-/$name-$version.tgz" -o "$tarball"
  actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [[ "$actual" != "$integrity" ]]; then
    echo "error: $name@$version does not match its published integrity" >&2
    exit 1
  fi
  mkdir -p "$work/$name"
  tar -xzf "$tarball" -C "$work/$name"
  for file in $files; do
    cp "$work/$name/package/$file" "./$(basename "$file")"
  done
  cp "$work/$name/package/LICENSE" "./LICENSE.$name"
  echo "$name $version $integrity" >> VERSIONS
done
echo "vendored: $(cut -d' ' -f1,2 VERSIONS | paste -sd, -)"
