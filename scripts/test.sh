#!/usr/bin/env bash
# Quick start 2: set up (idempotently), lint, type-check the package, run the whole test suite.
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
# The dashboard's end-to-end tests drive a real headless browser: Debian's Chromium and its
# WebDriver (a browser download at test time is not possible here).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Chromium and its driver for the dashboard's browser tests..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends chromium chromium-driver >/dev/null; } \
            || echo "warning: Chromium could not be installed; the browser tests will skip" >&2
    fi
fi
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check .
# mypy cannot follow the package-dir mapping (folders at the root, imported as oralfed.<folder>)
# through the editable install, so it checks a link tree that lays them out as oralfed/<folder>.
TYPECHECK="$ROOT/build/typecheck"
mkdir -p "$TYPECHECK/oralfed"
for package in schemas privacy client server deploy cli; do
    ln -sfn "$ROOT/$package" "$TYPECHECK/oralfed/$package"
done
(cd "$TYPECHECK" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" -p oralfed)
# Two workers, each taking whole test files (a file's module fixtures, such as a deployment,
# are built once); ORALFED_TEST_WORKERS=0 runs the suite in this one process.
exec "$ROOT/.venv/bin/python" -m pytest -n "${ORALFED_TEST_WORKERS:-2}" --dist loadfile "$@"
