#!/usr/bin/env bash
# The OHIF v3 viewer harness: puppeteer-core (npm ci, no browser download) and the pre-built
# OHIF dist (from `npm pack`, since `npm install @ohif/app` fails on a missing @ohif/i18n).
# Idempotent: a second run only checks. Usage: bash viewer/install.sh
set -euo pipefail
cd "$(dirname "$0")"

OHIF_PACKAGE=@ohif/app
OHIF_VERSION=3.13.2
OHIF_SHA1=26a51ffcc1704c30fff403258a1d7392e9a991f3   # npm view @ohif/app@3.13.2 dist.shasum

command -v node >/dev/null || { echo "viewer/install.sh: node (>= 18) is missing" >&2; exit 1; }
command -v npm >/dev/null || { echo "viewer/install.sh: npm is missing" >&2; exit 1; }

# puppeteer-core never downloads a browser; the tests use Debian's /usr/bin/chromium.
if ! cmp -s package-lock.json node_modules/.installed-package-lock.json; then
    PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --ignore-scripts
    cp package-lock.json node_modules/.installed-package-lock.json
fi

if [ "$(cat ohif/.version 2>/dev/null)" != "$OHIF_VERSION" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$OHIF_PACKAGE@$OHIF_VERSION" >/dev/null)
    tarball="$tmp/ohif-app-$OHIF_VERSION.tgz"
    echo "$OHIF_SHA1  $tarball" | sha1sum -c --quiet -
    tar -xzf "$tarball" -C "$tmp" package/dist
    rm -rf ohif
    mv "$tmp/package/dist" ohif
    echo "$OHIF_VERSION" > ohif/.version
fi
echo "viewer: puppeteer-core $(node -p 'require("./node_modules/puppeteer-core/package.json").version'), OHIF $(cat ohif/.version)"
