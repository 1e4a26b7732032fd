"""beets plugin: genres from an agf store's tagging model, into beets' ``genres`` field.

Enable it with ``plugins: agf`` and configure it in beets' config::

    agf:
        store: ~/agf-store        # an agf store with a transfer model (agf demo, or agf train)
        auto: no                  # yes: tag items as they are imported
        min_probability: 0.5      # write only genres at least this probable (calibrated)
        top: 1                    # at most this many genres per item
        genres_map: ''            # a JSON or CSV file: the model's genres -> your names (others not written)
        model: ''                 # a transfer model id (default: the store's newest)

``beet agf [QUERY]`` tags the matching items through agf (ingest, embed, classify; audio already
in the store is not recomputed) and sets their ``genres``; the files' tags follow beets' own
``import.write`` setting (``beet agf -W`` leaves the files alone), so the library and the files
agree. ``-p`` shows the genres and changes nothing.
"""

import os

from beets import ui
from beets.plugins import BeetsPlugin


class AgfPlugin(BeetsPlugin):
    def __init__(self):
        super().__init__()
        self.config.add({"store": "agf-store", "auto": False, "min_probability": 0.5, "top": 1, "genres_map": "",
                         "model": ""})
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]

    def commands(self):
        command = ui.Subcommand("agf", help="set genres with an agf store's tagging model")
        command.parser.add_option("-p", "--pretend", action="store_true", help="show the genres, change nothing")
        command.parser.add_option("-w", "--write", dest="write", action="store_true", default=None,
                                  help="write the genres into the files' tags too")
        command.parser.add_option("-W", "--nowrite", dest="write", action="store_false",
                                  help="change the library only, not the files")
        command.func = self.command
        return [command]

    def command(self, lib, opts, args):
        items = list(lib.items(args))
        if not items:
            raise ui.UserError("no item matches the query")
        self.tag_items(items, write=ui.should_write(opts.write), pretend=opts.pretend)

    def imported(self, session, task):
        # the importer writes the files afterwards, as its own write setting says
        self.tag_items(list(task.imported_items()), write=False, pretend=False)

    def tag_items(self, items, write: bool, pretend: bool) -> None:
        """Tag ``items`` with agf and set the genres its policy chooses."""
        import agf
        from agf.app.filetags import GenrePolicy, read_genres_map

        genres_map = self.config["genres_map"].as_str()
        policy = GenrePolicy(self.config["min_probability"].as_number(), self.config["top"].get(int),
                             read_genres_map(genres_map) if genres_map else None)
        paths = [os.fsdecode(item.path) for item in items]
        try:
            with agf.open(os.path.expanduser(self.config["store"].as_str()), write=True) as store:
                rows = {row["path"]: row for row in store.tag(paths, model=self.config["model"].as_str() or None)}
                ranked = store.predictions([r["track_id"] for r in rows.values() if r["track_id"] is not None],
                                           model=self.config["model"].as_str() or None)
        except agf.AgfError as exc:
            raise ui.UserError(f"agf: {exc}") from None
        for item, path in zip(items, paths):
            row = rows.get(os.path.realpath(path)) or rows.get(path)
            if row is None or row["track_id"] is None:
                self._log.warning("{}: not tagged ({})", path, row["error"] if row else "not read")
                continue
            genres = policy.choose(ranked.get(row["track_id"], []))
            if not genres:
                self._log.info("{}: no genre at {} or above: left as it is", path, policy.min_probability)
                continue
            self._log.info("{}: {}", path, ", ".join(genres))
            if pretend:
                continue
            item.genres = genres
            item.try_sync(write=write, move=False)
