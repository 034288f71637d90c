#!/bin/sh
# Installed as /app/greet by the example Dockerfile, with @ARCH@ and @VERSION@ filled in.
echo "${GREETING:-hello} (greet @VERSION@, built for @ARCH@, running on $(uname -m))"
