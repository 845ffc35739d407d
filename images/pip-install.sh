#!/bin/sh
# `pip install` for the image builds: from the package indexes (the default), or, when the build
# arg WHEELHOUSE=1 is set, only from the wheels copied into /wheels (an offline build: see
# images/README.md). Either way every package is pinned by images/requirements/*.txt.
set -eu
if [ "${WHEELHOUSE:-0}" = 1 ]; then
    exec pip install --no-cache-dir --no-index --find-links /wheels "$@"
fi
exec pip install --no-cache-dir "$@"
