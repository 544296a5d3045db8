#!/usr/bin/env bash
# Build the documentation site strictly (mkdocs build --strict): a broken link or anchor, a page
# missing from mkdocs.yml's nav, a missing snippet file or a failing API reference fails the build.
# The site goes to site/ (ignored by git); SITE_DIR=DIR puts it elsewhere. CI runs this script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# Material prints a banner about MkDocs 2 on every build; the build log is for warnings.
export NO_MKDOCS_2_WARNING=1
"$VENV/bin/mkdocs" build --strict --clean --site-dir "${SITE_DIR:-$ROOT/site}"
echo "Documentation built in ${SITE_DIR:-$ROOT/site}/index.html" >&2
