#!/bin/sh
# Runs once, when the compose volume is first initialised: the test database beside `amelia`.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-SQL
	CREATE DATABASE amelia_test OWNER "$POSTGRES_USER";
SQL
