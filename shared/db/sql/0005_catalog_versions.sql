-- The live catalog's record (shared/catalog_store.py): every version ever made current, whole.
-- Redis holds the current one (keys.CATALOG) that every process follows; a wiped Redis is re-seeded
-- from the newest row here, and the TOML file only seeds a store that has none.

CREATE TABLE catalog_versions (
    version     integer PRIMARY KEY,          -- 1, 2, ...: the number processes, jobs and usage rows carry
    document    jsonb NOT NULL,               -- the whole catalog (providers, nodes, models, aliases)
    actor       text NOT NULL DEFAULT '',     -- who made it current ("admin token", a user's email, "seed")
    note        text NOT NULL DEFAULT '',     -- what changed, in a few words
    created_at  timestamptz NOT NULL DEFAULT now()
);
