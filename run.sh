#!/usr/bin/env bash
# Set up (a .venv with the project and its dependencies) and serve, test or benchmark.
#   ./run.sh [--host H] [--port P] [--config FILE] [--workers N]   serve (default 127.0.0.1:8080)
#   ./run.sh test [pytest args]                                    run the test suite
#   ./run.sh bench [args]                                          throughput benchmark
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}

# Install the project with these extras ("" = only what serving needs) unless the last
# install, of this pyproject.toml, already included them. Serving never pulls the test or
# benchmark tools; `test` and `bench` add theirs to the same .venv.
ensure_env() {
    local extras=$1
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV with $PYTHON_BIN" >&2
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    local wanted=() extra
    IFS=, read -r -a wanted <<< "$extras"
    local missing=0
    [ -f "$stamp" ] || missing=1
    for extra in "${wanted[@]}"; do
        grep -qx "$extra" "$stamp" 2>/dev/null || missing=1
    done
    if [ "$missing" = 1 ]; then
        local had=()
        [ -f "$stamp" ] && mapfile -t had < "$stamp"
        local all
        all=$(printf '%s\n' "${had[@]}" "${wanted[@]}" | sed '/^$/d' | sort -u | paste -sd, -)
        echo "installing the project and its dependencies (extras: ${all:-none})" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".${all:+[$all]}"
        rm -f "$VENV"/.installed-*
        printf '%s\n' "${all//,/$'\n'}" > "$stamp"
    fi
}

# The browser tests drive Debian's Chromium; install it when we can (root with apt).
ensure_browser() {
    if [ -x /usr/bin/chromium ] || [ -n "${TTS_CHROMIUM:-}" ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium for the browser tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends chromium; } >&2; then
            echo "could not install chromium: the browser tests will be skipped" >&2
        fi
    else
        echo "no /usr/bin/chromium (install Debian's chromium): browser tests will be skipped" >&2
    fi
}

case "${1:-}" in
    test)
        shift
        ensure_env test
        ensure_browser
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_env bench
        exec "$VENV/bin/python" -m stress.throughput "$@"
        ;;
    *)
        ensure_env ""
        exec "$VENV/bin/python" -m tts_server serve "$@"
        ;;
esac
