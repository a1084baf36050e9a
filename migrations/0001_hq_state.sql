-- HQ's state in PostgreSQL (src/store/pg/). Applied once, in order, by
-- every HQ at start; recorded in schema_version.
--
-- One table holds every tree: `tree` names it (jobs, leaves, clients, ...),
-- `key` and `value` are the very bytes the sled backend stores (key codecs
-- from src/store/keys.rs, MessagePack values). bytea compares bytewise, as
-- sled does, so ordered scans and prefix ranges are the same on both.
-- A new tree needs no migration; a new layout of its keys or values does.
CREATE TABLE entries (
    tree  text  NOT NULL,
    key   bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tree, key)
);

-- Facts about the installation: `ca_hash` is the SHA-256 of the CA of the
-- first HQ that used this database; an HQ with another CA is refused.
CREATE TABLE cluster (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- Store::next_id counters: sequences, so that several HQs draw ids without
-- holding a row lock until their transaction commits (ids may have gaps).
CREATE SEQUENCE relaytree_id_job;
CREATE SEQUENCE relaytree_id_purge;
CREATE SEQUENCE relaytree_id_sync;
