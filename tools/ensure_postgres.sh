#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for the storage tests.
# Starts the machine's cluster if it is stopped. Under CI=true a missing server
# is an error (the database tests must run, never skip); elsewhere the tests
# skip with a visible reason.
set -u
HOST=127.0.0.1; PORT=5432
ready() { command -v pg_isready >/dev/null && pg_isready -q -h $HOST -p $PORT; }
if ready; then exit 0; fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  ver=$(ls /etc/postgresql | head -1)
  echo "starting PostgreSQL $ver ..."
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>&1 || true
  for _ in $(seq 1 30); do ready && break; sleep 1; done
fi
if ready; then exit 0; fi
if [ "${CI:-}" = "true" ]; then
  echo "error: no PostgreSQL server on $HOST:$PORT and it could not be started" >&2
  exit 1
fi
echo "NOTE: no PostgreSQL on $HOST:$PORT; the PostgreSQL tests will skip." >&2
exit 0
