-- Access keys for SigV4-signed requests (the EC2 front-end): an key id and
-- its secret bound to an identity (DN and attributes, JSON). SigV4 is an
-- HMAC, so the secret itself must be kept to check a signature.
CREATE TABLE access_keys (
    id         TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    dn         TEXT NOT NULL,
    identity   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX access_keys_dn ON access_keys (dn);

-- What the EC2 front-end adds to a workspace it launched: the reservation,
-- type, key pair, user data, client token and launch time (ready_at: when
-- its launch's deploy and start were done; until then it is pending); kept an hour
-- after the workspace is terminated so that waiters see it terminated.
CREATE TABLE ec2_instances (
    workspace     TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    reservation   TEXT NOT NULL,
    image_id      TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    key_name      TEXT,
    user_data     TEXT,
    client_token  TEXT,
    launch_index  BIGINT NOT NULL,
    launched_at   BIGINT NOT NULL,
    ready_at      BIGINT,
    terminated_at BIGINT
);
CREATE INDEX ec2_instances_owner ON ec2_instances (owner);
CREATE INDEX ec2_instances_token ON ec2_instances (owner, client_token);

-- Key pairs: public keys by owner and name.
CREATE TABLE ec2_key_pairs (
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    id          TEXT NOT NULL UNIQUE,
    key_type    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Tags on instances and images, by owner.
CREATE TABLE ec2_tags (
    resource TEXT NOT NULL,
    owner    TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (resource, key)
);
CREATE INDEX ec2_tags_owner ON ec2_tags (owner);
