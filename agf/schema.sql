-- The agf catalog: one DuckDB view per store table, over that table's Parquet parts.
-- {parts:<table>} expands to parts_<table>: the table's verified Parquet parts, registered as an
-- Arrow dataset (DuckDB itself reads no file: see Store.connect);
-- {vector:<table>} to FLOAT[n] once every vector in that table has the same n, else FLOAT[].
-- Fixed-size vectors make array_cosine_similarity(a.vector, b.vector) work in user SQL.

CREATE OR REPLACE VIEW tracks AS SELECT * FROM {parts:tracks};
CREATE OR REPLACE VIEW artists AS SELECT * FROM {parts:artists};
CREATE OR REPLACE VIEW albums AS SELECT * FROM {parts:albums};
CREATE OR REPLACE VIEW genres AS SELECT * FROM {parts:genres};
CREATE OR REPLACE VIEW ingest_errors AS SELECT * FROM {parts:ingest_errors};

CREATE OR REPLACE VIEW features_mfcc AS
    SELECT track_id, vector::{vector:features_mfcc} AS vector FROM {parts:features_mfcc};
CREATE OR REPLACE VIEW features_dmfcc AS
    SELECT track_id, vector::{vector:features_dmfcc} AS vector FROM {parts:features_dmfcc};
CREATE OR REPLACE VIEW features_fma AS
    SELECT track_id, vector::{vector:features_fma} AS vector FROM {parts:features_fma};
CREATE OR REPLACE VIEW features_essentia AS
    SELECT track_id, vector::{vector:features_essentia} AS vector FROM {parts:features_essentia};
CREATE OR REPLACE VIEW features_echonest AS
    SELECT track_id, vector::{vector:features_echonest} AS vector FROM {parts:features_echonest};

CREATE OR REPLACE VIEW clusters AS SELECT * FROM {parts:clusters};
CREATE OR REPLACE VIEW artist_bow AS SELECT * FROM {parts:artist_bow};
CREATE OR REPLACE VIEW agf AS
    SELECT artist_id, source, model_id, factors::{vector:agf} AS factors FROM {parts:agf};
CREATE OR REPLACE VIEW embeddings AS
    SELECT track_id, model_id, vector::{vector:embeddings} AS vector FROM {parts:embeddings};
CREATE OR REPLACE VIEW artist_vectors AS
    SELECT artist_id, space, vector::{vector:artist_vectors} AS vector FROM {parts:artist_vectors};
CREATE OR REPLACE VIEW models AS SELECT * FROM {parts:models};
CREATE OR REPLACE VIEW predictions AS SELECT * FROM {parts:predictions};
CREATE OR REPLACE VIEW tag_writes AS SELECT * FROM {parts:tag_writes};
