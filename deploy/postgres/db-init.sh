#!/bin/bash
# deploy/postgres/db-init.sh: one PostgreSQL role and one schema per service, owned by that role,
# and nothing else for it (DESIGN.md §9). Idempotent: safe on every start (compose's db-init
# service, a Kubernetes Job) and as a /docker-entrypoint-initdb.d script of the postgres image.
# Connects as an admin role with the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
# PGDATABASE), falling back to the postgres image's POSTGRES_USER / POSTGRES_DB.
#   EXTRANET_DB_SERVICES          services to set up (identity expiry audit membership tasks
#                                 calendar files chat)
#   EXTRANET_DB_PASSWORD_<NAME>   that service's password (e.g. EXTRANET_DB_PASSWORD_IDENTITY);
#                                 unset: the role is created NOLOGIN until a password is given
#   EXTRANET_DB_PASSWORD_AUDIT_WRITER  the role audit runs as (EXTRANET_PG): it may read and
#                                 append the chain, never UPDATE, DELETE, TRUNCATE or ALTER it;
#                                 "audit" (the owner) only migrates (EXTRANET_PG_MIGRATE)
set -Eeuo pipefail

db="${PGDATABASE:-${POSTGRES_DB:-extranet}}"
user="${PGUSER:-${POSTGRES_USER:-postgres}}"
services="${EXTRANET_DB_SERVICES:-identity expiry audit membership tasks calendar files chat}"
psql=(psql -X -q -v ON_ERROR_STOP=1 --username "$user" --dbname "$db")

# Over TCP the server may still be starting: retry for up to a minute.
for i in $(seq 1 60); do
    if "${psql[@]}" -c 'SELECT 1' >/dev/null 2>&1; then break; fi
    [ "$i" = 60 ] && { echo "db-init: cannot connect to database $db as $user" >&2; "${psql[@]}" -c 'SELECT 1'; exit 1; }
    sleep 1
done

# Nobody but the admin and the service roles may connect; nobody may create in public.
"${psql[@]}" --set db="$db" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL

for svc in $services; do
    case "$svc" in
    *[!a-z0-9_]* | "" | [0-9]*) echo "db-init: bad service name '$svc'" >&2; exit 1 ;;
    esac
    var="EXTRANET_DB_PASSWORD_$(echo "$svc" | tr '[:lower:]' '[:upper:]')"
    pw="${!var:-}"
    if [ -n "$pw" ]; then login=LOGIN; else login=NOLOGIN; fi
    # psql variables (:'x' literal, :"x" identifier) quote the values: no SQL injection.
    "${psql[@]}" --set role="$svc" --set pw="$pw" --set db="$db" --set login="$login" <<'SQL'
SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH :login NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'pw') WHERE :'pw' <> '' \gexec
SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', :'role', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'role') \gexec
ALTER SCHEMA :"role" OWNER TO :"role";
REVOKE ALL ON SCHEMA :"role" FROM PUBLIC;
-- CONNECT only, no CREATE on the database: the schema exists (above), and pg_migrate looks it
-- up before creating it. The REVOKE takes the right back from databases set up by earlier
-- versions of this script, which granted it.
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
REVOKE CREATE ON DATABASE :"db" FROM :"role";
ALTER ROLE :"role" IN DATABASE :"db" SET search_path = :"role";
SQL
    echo "db-init: role and schema $svc ($login)"
done

# The audit chain's writer: a role that does not own audit's tables, so it cannot change or
# delete a record nor switch the immutability trigger off. Its grants on the tables are given
# by audit's migration 002 when the tables are made, and here for tables made before it existed.
case " $services " in
*" audit "*)
    pw="${EXTRANET_DB_PASSWORD_AUDIT_WRITER:-}"
    if [ -n "$pw" ]; then login=LOGIN; else login=NOLOGIN; fi
    "${psql[@]}" --set pw="$pw" --set db="$db" --set login="$login" <<'SQL'
SELECT 'CREATE ROLE audit_writer'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') \gexec
ALTER ROLE audit_writer WITH :login NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
SELECT format('ALTER ROLE audit_writer PASSWORD %L', :'pw') WHERE :'pw' <> '' \gexec
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO audit_writer;
ALTER ROLE audit_writer IN DATABASE :"db" SET search_path = audit;
GRANT USAGE ON SCHEMA audit TO audit_writer;
SELECT 'GRANT SELECT, INSERT ON audit.records TO audit_writer'
 WHERE to_regclass('audit.records') IS NOT NULL \gexec
SELECT 'GRANT SELECT, UPDATE ON audit.head TO audit_writer'
 WHERE to_regclass('audit.head') IS NOT NULL \gexec
SELECT 'GRANT SELECT ON audit.schema_migrations TO audit_writer'
 WHERE to_regclass('audit.schema_migrations') IS NOT NULL \gexec
SQL
    echo "db-init: role audit_writer ($login)"
    ;;
esac
