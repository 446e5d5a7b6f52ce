-- membership's audit outbox (services/runtime/include/extranet/audit.h): records written in the
-- same transaction as the change, shipped to the audit service by the tick's relay (R11).
CREATE TABLE audit_outbox (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    time          timestamptz NOT NULL DEFAULT now(),
    actor_id      text        NOT NULL DEFAULT '',
    actor_kind    text        NOT NULL DEFAULT '',
    actor_ip      text        NOT NULL DEFAULT '',
    actor_session text        NOT NULL DEFAULT '',
    action        text        NOT NULL,
    target_type   text        NOT NULL DEFAULT '',
    target_id     text        NOT NULL DEFAULT '',
    group_id      text        NOT NULL DEFAULT '',
    outcome       text        NOT NULL DEFAULT '',
    request_id    text        NOT NULL DEFAULT '',
    details       text        NOT NULL DEFAULT '{}'
);
