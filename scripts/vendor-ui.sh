#!/usr/bin/env bash
# Copy the web UI's third-party assets from the npm registry into src/observatory/ui/static/vendor/.
#
# The vendored files are committed, so running the server needs no npm, no CDN and no build step.
# Run this only to upgrade: change a version below, run `scripts/vendor-ui.sh`, look at the pages
# (`make run`, `make demo`) and commit the result together with VENDORED.txt.
#
# npm verifies each tarball against the registry's integrity hash; VENDORED.txt records the
# sha256 of every copied file so a review can see exactly what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

HTMX_VERSION=2.0.11          # htmx.org: partial page updates (span panel, live refresh)
UPLOT_VERSION=1.6.32         # uplot: time-series charts
INTER_VERSION=5.3.0          # @fontsource-variable/inter: the UI font (latin subset)
SWAGGER_UI_VERSION=5.35.0    # swagger-ui-dist: the interactive API docs at /docs

DEST=src/observatory/ui/static/vendor
command -v npm >/dev/null || { echo "vendor-ui: npm is needed (apt-get install npm)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

fetch() {  # fetch <package>@<version> → unpacked in ${work}/<dir>/package
    local spec=$1 dir=$2 tarball
    tarball=$(cd "${work}" && npm pack --silent "${spec}" | tail -n1)
    mkdir -p "${work}/${dir}"
    tar -xzf "${work}/${tarball}" -C "${work}/${dir}"
}

fetch "htmx.org@${HTMX_VERSION}" htmx
fetch "uplot@${UPLOT_VERSION}" uplot
fetch "@fontsource-variable/inter@${INTER_VERSION}" inter
fetch "swagger-ui-dist@${SWAGGER_UI_VERSION}" swagger

rm -rf "${DEST}"
mkdir -p "${DEST}"
cp "${work}/htmx/package/dist/htmx.min.js" "${DEST}/htmx.min.js"
cp "${work}/htmx/package/LICENSE" "${DEST}/htmx.LICENSE.txt"
cp "${work}/uplot/package/dist/uPlot.iife.min.js" "${DEST}/uPlot.iife.min.js"
cp "${work}/uplot/package/dist/uPlot.min.css" "${DEST}/uPlot.min.css"
cp "${work}/uplot/package/LICENSE" "${DEST}/uPlot.LICENSE.txt"
cp "${work}/inter/package/files/inter-latin-wght-normal.woff2" "${DEST}/inter-latin-wght-normal.woff2"
cp "${work}/inter/package/LICENSE" "${DEST}/inter.LICENSE.txt"
cp "${work}/swagger/package/swagger-ui-bundle.js" "${DEST}/swagger-ui-bundle.js"
cp "${work}/swagger/package/swagger-ui.css" "${DEST}/swagger-ui.css"
cp "${work}/swagger/package/LICENSE" "${DEST}/swagger-ui.LICENSE.txt"

{
    echo "# Written by scripts/vendor-ui.sh; do not edit by hand."
    echo "htmx.org ${HTMX_VERSION}"
    echo "uplot ${UPLOT_VERSION}"
    echo "@fontsource-variable/inter ${INTER_VERSION}"
    echo "swagger-ui-dist ${SWAGGER_UI_VERSION}"
    echo
    (cd "${DEST}" && sha256sum -- *.js *.css *.woff2)
} > "${DEST}/VENDORED.txt"
echo "vendor-ui: copied into ${DEST}:"
ls -l "${DEST}"
