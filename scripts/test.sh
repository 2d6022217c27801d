#!/usr/bin/env bash
# Quick start 2: set up (idempotently) and run the whole test suite, then the linter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
# The coordinator database is also tested against a real PostgreSQL server (a throwaway
# cluster the test starts itself): install Debian's server package when it is missing.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing PostgreSQL for the coordinator database tests..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends postgresql >/dev/null; } \
            || echo "warning: PostgreSQL could not be installed; its tests will skip" >&2
    fi
fi
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check .
exec "$ROOT/.venv/bin/python" -m pytest "$@"
