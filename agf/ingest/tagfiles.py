"""A file's own tags, through mutagen's "easy" interfaces, for reading (ingest) and writing
(``agf tag --write-tags``).

mutagen has no tags for raw AAC (ADTS) files. Taggers give them an ID3v2 tag before the first
frame, which ffmpeg and players skip; mutagen then takes the file for an MP3 and fails to find
its frames. :class:`EasyAAC` reads and writes that ID3v2 tag.
"""

import os
import stat
from pathlib import Path

from mutagen.aac import AACInfo
from mutagen.easyid3 import EasyID3FileType

from agf.ingest.audio import ffmpeg_demuxer


class NotARegularFile(OSError):
    """A path that names a FIFO (which would block mutagen), a device (which never ends) or a folder."""


class EasyAAC(EasyID3FileType):
    """A raw AAC (ADTS) file with its ID3v2 tag, which :meth:`add_tags` adds where there is none."""

    class _Info(AACInfo):
        # ID3FileType also hands over where its tag ends; AACInfo skips the tag itself, from the start
        def __init__(self, fileobj, offset=None):
            fileobj.seek(0)
            super().__init__(fileobj)


def open_tags(path: Path):
    """mutagen's easy view of ``path``: a ``mutagen.FileType`` whose ``tags`` may be None (no tag
    yet), or None where mutagen knows no such format. Raises :class:`NotARegularFile`, OSError,
    or, for a damaged file, whatever mutagen's parser met.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotARegularFile("not a regular file")
    if ffmpeg_demuxer(path) == "aac":
        return EasyAAC(path)
    import mutagen

    return mutagen.File(path, easy=True)
