-- The chain is append-only for the role the service runs as: where deploy/postgres/db-init.sh
-- created an "audit_writer" role (compose, Swarm, Kubernetes), audit runs as it
-- (EXTRANET_PG) and migrates as "audit" (EXTRANET_PG_MIGRATE, the owner). The writer may read
-- and append records and move the head, and nothing else: no UPDATE, DELETE or TRUNCATE on
-- records, no ALTER (so no DISABLE TRIGGER). Without such a role (the native test cluster)
-- this does nothing.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT USAGE ON SCHEMA audit TO audit_writer;
        GRANT SELECT, INSERT ON audit.records TO audit_writer;
        GRANT SELECT, UPDATE ON audit.head TO audit_writer;
        GRANT SELECT ON audit.schema_migrations TO audit_writer;
    END IF;
END
$$;
