"""Arrow schemas of every store table: the one place in code where columns are declared.

Vector columns are declared as variable ``list<float32>``; parts are written as
``fixed_size_list<float32>[n]`` (see :func:`fixed_vectors`) and the views in
``schema.sql`` cast them to ``FLOAT[n]`` once the store knows ``n``.
"""

import numpy as np
import pyarrow as pa

VECTOR = pa.list_(pa.float32())
INT_LIST = pa.list_(pa.int32())
STRING_LIST = pa.list_(pa.string())
TIMESTAMP = pa.timestamp("us", tz="UTC")

FEATURE_SETS = ("mfcc", "dmfcc", "fma", "essentia")

_FEATURE = pa.schema([("track_id", pa.int64()), ("vector", VECTOR)])

SCHEMAS: dict[str, pa.Schema] = {
    "tracks": pa.schema(
        [
            ("track_id", pa.int64()),
            ("source_id", pa.string()),
            ("path", pa.string()),
            ("audio_sha256", pa.string()),
            ("title", pa.string()),
            ("artist_id", pa.int64()),
            ("album_id", pa.int64()),
            ("duration_s", pa.float32()),
            ("sample_rate", pa.int32()),
            ("genre_top", pa.string()),
            ("genres", INT_LIST),
            ("genres_all", INT_LIST),
            ("tags", STRING_LIST),
            ("split", pa.string()),
            ("subset", pa.string()),
            ("ingested_at", TIMESTAMP),
        ]
    ),
    "artists": pa.schema([("artist_id", pa.int64()), ("source_id", pa.string()), ("name", pa.string())]),
    "albums": pa.schema(
        [
            ("album_id", pa.int64()),
            ("source_id", pa.string()),
            ("title", pa.string()),
            ("artist_id", pa.int64()),
        ]
    ),
    "genres": pa.schema(
        [
            ("genre_id", pa.int32()),
            ("title", pa.string()),
            ("parent_id", pa.int32()),
            ("top_level", pa.int32()),
        ]
    ),
    **{f"features_{name}": _FEATURE for name in FEATURE_SETS},
    # FMA's echonest.csv, as released (audio, social and temporal features): imported, never computed
    "features_echonest": _FEATURE,
    "ingest_errors": pa.schema(
        [("path", pa.string()), ("stage", pa.string()), ("error", pa.string()), ("at", TIMESTAMP)]
    ),
    "clusters": pa.schema(
        [
            ("track_id", pa.int64()),
            ("source", pa.string()),
            ("model_id", pa.string()),
            ("cluster_ids", INT_LIST),
            ("counts", INT_LIST),
        ]
    ),
    "artist_bow": pa.schema(
        [
            ("artist_id", pa.int64()),
            ("source", pa.string()),
            ("model_id", pa.string()),
            ("word_ids", INT_LIST),
            ("weights", VECTOR),
        ]
    ),
    "agf": pa.schema(
        [("artist_id", pa.int64()), ("source", pa.string()), ("model_id", pa.string()), ("factors", VECTOR)]
    ),
    "embeddings": pa.schema([("track_id", pa.int64()), ("model_id", pa.string()), ("vector", VECTOR)]),
    "artist_vectors": pa.schema([("artist_id", pa.int64()), ("space", pa.string()), ("vector", VECTOR)]),
    "models": pa.schema(
        [
            ("model_id", pa.string()),
            ("kind", pa.string()),
            ("target", pa.string()),
            ("params", pa.string()),
            ("metrics", pa.string()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("created_at", TIMESTAMP),
        ]
    ),
    "predictions": pa.schema(
        [
            ("track_id", pa.int64()),
            ("model_id", pa.string()),
            ("genre", pa.string()),
            ("probability", pa.float32()),
            ("rank", pa.int32()),
            ("predicted_at", TIMESTAMP),
        ]
    ),
    # genres agf wrote into files' own tags, and what those tags held before (agf tag --write-tags / --undo)
    "tag_writes": pa.schema(
        [
            ("track_id", pa.int64()),
            ("path", pa.string()),
            ("field", pa.string()),
            ("old_value", pa.list_(pa.string())),
            ("new_value", pa.list_(pa.string())),
            ("sha256_before", pa.string()),
            ("sha256_after", pa.string()),
            ("model_id", pa.string()),
            ("written_at", TIMESTAMP),
        ]
    ),
}

#: The vector column of each table that has one; views cast it to FLOAT[n].
VECTOR_COLUMNS = {
    name: field.name
    for name, schema in SCHEMAS.items()
    for field in schema
    if field.type == VECTOR and field.name in ("vector", "factors")
}


def fixed_vectors(matrix) -> pa.FixedSizeListArray:
    """Pack a 2-d array (n_rows, dim) into an Arrow ``fixed_size_list<float32>[dim]`` column."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-d matrix of vectors, got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def conform(table_name: str, table: pa.Table) -> pa.Table:
    """Order and cast ``table``'s columns to the declared schema, keeping fixed-size vectors fixed.

    Raises ``KeyError`` for an unknown table and ``ValueError`` when a declared column is missing.
    """
    schema = SCHEMAS[table_name]
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{table_name}: missing columns {missing}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        fixed = pa.types.is_fixed_size_list(column.type) and field.type == VECTOR
        target = pa.list_(pa.float32(), column.type.list_size) if fixed else field.type
        columns.append(column.cast(target))
    fields = [pa.field(f.name, c.type) for f, c in zip(schema, columns)]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
