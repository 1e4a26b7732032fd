"""Audio and metadata in, rows out: decoding, metadata readers, feature extractors, the pipeline."""

from pathlib import Path

from agf.errors import AgfError
from agf.ingest.metadata import Candidate, GenreRow, read_fma, read_folder, read_manifest
from agf.ingest.pipeline import IngestSummary, ingest, ingest_parts


def collect(
    audio_dir: Path,
    manifest: Path | None = None,
    fma_metadata: Path | None = None,
    mapping: dict[str, str] | None = None,
    subset: str | None = None,
    notes: list[str] | None = None,
) -> tuple[list[Candidate], list[GenreRow]]:
    """The files to ingest and the genre tree, from FMA metadata, a manifest, or the folder's tags
    (a line naming the files it passes over, in formats agf does not read, goes to ``notes``)."""
    audio_dir = Path(audio_dir)
    if manifest and fma_metadata:
        raise AgfError("give --manifest or --fma-metadata, not both")
    if not audio_dir.is_dir():
        raise AgfError(f"audio folder {audio_dir} does not exist")
    if fma_metadata:
        return read_fma(fma_metadata, audio_dir, subset=subset)
    if manifest:
        return read_manifest(manifest, audio_dir, mapping), []
    return read_folder(audio_dir, notes=notes), []


__all__ = ["Candidate", "GenreRow", "IngestSummary", "collect", "ingest", "ingest_parts"]
