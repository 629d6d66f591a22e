-- The profile store. Every primary and unique key leads with db_id (or, for
-- account-level tables, account_id), so that the profile tables can be
-- distributed by db_id (Citus) and the account tables made reference tables.

CREATE TABLE accounts (
    account_id  integer PRIMARY KEY CHECK (account_id >= 1),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE databases (
    db_id       integer PRIMARY KEY CHECK (db_id >= 1),
    account_id  integer NOT NULL REFERENCES accounts (account_id),
    name        text NOT NULL DEFAULT ''
);

CREATE TABLE database_fields (
    db_id       integer NOT NULL REFERENCES databases (db_id),
    name        text NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]*$'),
    type        text NOT NULL CHECK (type IN ('int', 'float', 'string', 'bool', 'date',
                                              'list', 'ip', 'tags', 'object', 'arr_object')),
    options     text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (db_id, name)
);

CREATE TABLE resources (
    account_id  integer NOT NULL REFERENCES accounts (account_id),
    resource_id integer NOT NULL CHECK (resource_id >= 1),
    name        text NOT NULL DEFAULT '',
    PRIMARY KEY (account_id, resource_id)
);

CREATE TABLE resource_fields (
    account_id  integer NOT NULL,
    resource_id integer NOT NULL,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]*$'),
    type        text NOT NULL CHECK (type IN ('int', 'float', 'string', 'bool', 'date',
                                              'list', 'ip', 'tags', 'object', 'arr_object')),
    options     text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (account_id, resource_id, name),
    FOREIGN KEY (account_id, resource_id) REFERENCES resources (account_id, resource_id)
);

-- A resource is linked to databases of its own account only (checked on load).
CREATE TABLE resource_databases (
    db_id       integer NOT NULL REFERENCES databases (db_id),
    account_id  integer NOT NULL,
    resource_id integer NOT NULL,
    PRIMARY KEY (db_id, resource_id),
    FOREIGN KEY (account_id, resource_id) REFERENCES resources (account_id, resource_id)
);

CREATE TABLE profiles (
    db_id       integer NOT NULL REFERENCES databases (db_id),
    profile_id  text NOT NULL CHECK (profile_id ~ '^[0-9a-f]{24}$'),
    email       text,
    phones      text[] NOT NULL DEFAULT '{}',
    fields      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, profile_id)
);
-- Two profiles of one database never share an e-mail: the index decides.
CREATE UNIQUE INDEX profiles_email_key ON profiles (db_id, email);
-- Phone and custom-field look-ups. Not led by db_id: a GIN entry for one db_id
-- would list every row of the database, and each probe would walk it. No pending
-- list (fastupdate): its linear scan slows every probe until a vacuum merges it.
CREATE INDEX profiles_phones_idx ON profiles USING gin (phones) WITH (fastupdate = off);
CREATE INDEX profiles_fields_idx ON profiles USING gin (fields jsonb_path_ops) WITH (fastupdate = off);

-- A subscription is identified by (resource, channel, provider, address) and so
-- belongs to at most one profile of the database.
CREATE TABLE subscriptions (
    db_id         integer NOT NULL,
    resource_id   integer NOT NULL,
    channel       text NOT NULL,
    provider      text NOT NULL DEFAULT '',
    address       text NOT NULL,
    profile_id    text NOT NULL,
    status        text NOT NULL DEFAULT 'subscribed'
                  CHECK (status IN ('subscribed', 'unsubscribed', 'suspended')),
    priority      bigint,
    custom_fields jsonb NOT NULL DEFAULT '{}',
    cats          text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, resource_id, channel, provider, address),
    FOREIGN KEY (db_id, profile_id) REFERENCES profiles (db_id, profile_id)
);
CREATE INDEX subscriptions_address_idx ON subscriptions (db_id, channel, address);
CREATE INDEX subscriptions_profile_idx ON subscriptions (db_id, profile_id);
CREATE INDEX subscriptions_custom_fields_idx ON subscriptions
    USING gin (custom_fields jsonb_path_ops) WITH (fastupdate = off);

-- Trigger events, written in the transaction of the change they record.
CREATE TABLE events (
    db_id       integer NOT NULL,
    event_id    bigint GENERATED ALWAYS AS IDENTITY,
    profile_id  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('profile_created', 'profile_updated',
                                              'subscribed', 'subscription_status_changed')),
    feedback_id text NOT NULL DEFAULT '',
    payload     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, event_id)
);

-- One row per answered message, written with its effects: a redelivered
-- message that is found here was applied already, and gets `result` again.
-- A batch inserts each row as a placeholder (a lock), then writes the result into
-- it: free space on the page lets that second write be a HOT update.
CREATE TABLE message_log (
    db_id       integer NOT NULL,
    message_key bytea NOT NULL,
    result      bytea NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, message_key)
) WITH (fillfactor = 80);
CREATE INDEX message_log_applied_at_idx ON message_log USING brin (applied_at);

-- Claim rows: a worker about to create a profile for an identity value locks
-- its claim first, so two workers never create two profiles for one value.
CREATE TABLE match_claims (
    db_id       integer NOT NULL,
    claim_key   bytea NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, claim_key)
) WITH (fillfactor = 80);
CREATE INDEX match_claims_claimed_at_idx ON match_claims USING brin (claimed_at);

-- Internal failures per message, counted across redeliveries and workers.
CREATE TABLE delivery_failures (
    db_id       integer NOT NULL,
    message_key bytea NOT NULL,
    failures    integer NOT NULL,
    last_error  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (db_id, message_key)
);
