#!/usr/bin/env bash
# A database per service (DESIGN §2: no service reads another's tables): for each service a login role and a
# database of the same name (msa_user, msa_catalog, msa_order) that only that role owns and may connect to.
#
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d/), on the first start of an empty data
# volume, against its temporary socket-only server, as the superuser. The passwords come from the environment
# (docker-compose.yml → .env); they reach the server as psql variables, quoted by psql (:'password'), never
# spliced into SQL text by the shell. Must be executable: a non-executable *.sh is sourced into the entrypoint
# instead, and `set -u` would then leak into it.
set -euo pipefail

create_service_database() {  # $1: the service; $2: its role's password
    local name="msa_$1" password="$2"
    # The heredoc is quoted ('SQL'): the shell expands nothing in it, psql substitutes :"name" and :'password'.
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
         -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
-- By default every role may connect to every database: only its owner may connect to this one.
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
    echo "init-databases: created role and database ${name}"
}

create_service_database user "${USER_DB_PASSWORD:?USER_DB_PASSWORD is not set}"
create_service_database catalog "${CATALOG_DB_PASSWORD:?CATALOG_DB_PASSWORD is not set}"
create_service_database order "${ORDER_DB_PASSWORD:?ORDER_DB_PASSWORD is not set}"
