"""``siprecd models``: the Vosk models of a configuration, for operators.

::

    siprecd models list -c FILE [--json]
    siprecd models fetch -c FILE [--language TAG ...]
    siprecd models verify -c FILE [--language TAG ...]

``list`` says, for each language of ``asr.models``, where its model is
looked for and whether it is there (complete), missing (and whether the
daemon would fetch it at start) or incomplete. ``fetch`` fetches every
missing model given by name now, the way the daemon does at start
(``siprecd.asr.models``: Vosk's model list and zip, from Vosk's own
address or ``asr.download_url``; size and MD5 checked), with a progress
line per tenth; it does so whatever ``asr.download`` says, since it is
asked for. ``verify`` loads each model with Vosk, as the daemon will (a
few seconds and some hundred MB each).

Exit status: 0 when every model asked about is there (``list``: always
0), 1 when one is not or cannot be fetched or loaded (one line each on
standard error says why), 78 for a configuration error.
"""

import json
import sys

from siprecd.clitools import EXIT_CONFIG, fail, load_config

__all__ = ["register"]


def register(subparsers):
    models = subparsers.add_parser("models", help="list, fetch and verify the Vosk models")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def add(name, help_, func):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True, help="YAML configuration file")
        p.set_defaults(func=func)
        return p

    listing = add("list", "where each language's model is, and whether it is there", _list)
    listing.add_argument("--json", action="store_true", help="one JSON object per language")
    fetch = add("fetch", "fetch the missing models now", _fetch)
    verify = add("verify", "load each model with Vosk", _verify)
    for p in (fetch, verify):
        p.add_argument("--language", "-l", action="append", metavar="TAG",
                       help="only this language (repeatable)")


def _backend(args):
    """(config, VoskBackend not started) or an exit status."""
    from siprecd.asr.vosk import VoskBackend
    from siprecd.config import ConfigError

    try:
        config = load_config(args.config)
        if config.asr.backend != "vosk":
            return fail(f"asr.backend is {config.asr.backend!r}: its models are not siprecd's "
                        "to manage", EXIT_CONFIG)
        return config, VoskBackend.from_config(config, reactor=None)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)


def _backend_and_languages(args):
    """(config, VoskBackend not started, the languages asked for) or an
    exit status."""
    made = _backend(args)
    if isinstance(made, int):
        return made
    config, backend = made
    try:
        return config, backend, _chosen(args, backend)
    except ValueError as e:
        return fail(str(e))


def _chosen(args, backend):
    from siprecd.asr.common import normalise_language

    if not getattr(args, "language", None):
        return backend.languages()
    wanted = [normalise_language(tag) for tag in args.language]
    unknown = [tag for tag in wanted if tag not in backend.languages()]
    if unknown:
        raise ValueError(f"not in asr.models: {', '.join(unknown)} "
                         f"(configured: {', '.join(backend.languages())})")
    return wanted


def _state(backend, tag):
    from siprecd.asr import models as modelfiles

    path = backend.model_path(tag)
    if not path.is_dir():
        return "missing", path
    missing = modelfiles.missing_files(path)
    return (f"incomplete (no {', '.join(missing)})" if missing else "present"), path


def _list(args):
    made = _backend(args)
    if isinstance(made, int):
        return made
    config, backend = made
    for tag in backend.languages():
        state, path = _state(backend, tag)
        fetch = state == "missing" and backend.can_fetch(tag)
        if args.json:
            print(json.dumps({"language": tag, "model": config.asr.models[_written(config, tag)],
                              "path": str(path), "state": state,
                              "fetchedAtStart": fetch and config.asr.download}))
        else:
            if fetch:
                state += (": fetched at start (asr.download)" if config.asr.download
                          else ": `siprecd models fetch` fetches it (asr.download is off)")
            print(f"{tag}  {path}  {state}")
    return 0


def _written(config, tag):
    from siprecd.asr.common import normalise_language

    return next(k for k in config.asr.models if normalise_language(k) == tag)


def _fetch(args):
    from siprecd.asr import models as modelfiles

    made = _backend_and_languages(args)
    if isinstance(made, int):
        return made
    config, backend, tags = made
    status = 0
    for tag in tags:
        state, path = _state(backend, tag)
        if state == "present":
            print(f"{tag}: {path} is there")
            continue
        if state != "missing" or not backend.can_fetch(tag):
            status = fail(f"asr.models.{_written(config, tag)}: {path} is {state}; "
                          + ("" if state != "missing" else "a path cannot be fetched; ")
                          + "place the unpacked model folder there")
            continue
        name = config.asr.models[_written(config, tag)]
        print(f"{tag}: fetching {name} from "
              f"{modelfiles.model_zip_url(name, config.asr.download_url)} into "
              f"{backend.models_dir}")
        shown = [-1]

        def progress(received, total, tag=tag, shown=shown):
            tenth = received * 10 // total if total else None
            if tenth is not None and tenth > shown[0]:
                shown[0] = tenth
                print(f"{tag}: {received / 2**20:.1f} of {total / 2**20:.1f} MiB "
                      f"({received * 100 // total}%)", flush=True)

        try:
            modelfiles.fetch_model(name, backend.models_dir, base_url=config.asr.download_url,
                                   progress=progress)
        except modelfiles.FetchError as e:
            status = fail(f"asr.models.{_written(config, tag)}: cannot fetch {name}: {e}")
            continue
        print(f"{tag}: {path} is there")
    return status


def _verify(args):
    import vosk

    made = _backend_and_languages(args)
    if isinstance(made, int):
        return made
    config, backend, tags = made
    vosk.SetLogLevel(-1)
    status = 0
    for tag in tags:
        state, path = _state(backend, tag)
        key = f"asr.models.{_written(config, tag)}"
        if state != "present":
            status = fail(f"{key}: {path} is {state}")
            continue
        try:
            vosk.Model(str(path))
        except Exception:
            status = fail(f"{key}: Vosk cannot load {path} as a model")
            continue
        print(f"{tag}: {path} loads")
        sys.stdout.flush()
    return status
