"""Test-only fault injection, loaded by Python at start-up when this folder is on PYTHONPATH.

With DRIVE_TEST_DIE_AT set, the process dies on the spot (`os._exit`: no cleanup, no commit, as with
kill -9) at one point of the conflicted-copy step, where no signal sent from outside could land:

- `link`: right after a local copy's bytes get a second name in the cache's files folder (by link or
  by rename), before the index commits the copy's row;
- `unlink`: right before the first of two names of such bytes is removed (after that commit).

Only tests/reliability/test_conflict_crash.py puts this folder on PYTHONPATH.
"""

import os

_POINT = os.environ.get("DRIVE_TEST_DIE_AT")


def _data_file(path) -> bool:
    path = os.fspath(path)
    return os.path.basename(os.path.dirname(path)) == "files" and os.path.basename(path).isdigit()


if _POINT:
    _link, _replace, _unlink = os.link, os.replace, os.unlink

    def link(src, dst, *args, **kwargs):
        _link(src, dst, *args, **kwargs)
        if _POINT == "link" and _data_file(src) and _data_file(dst):
            os._exit(9)

    def replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if _POINT == "link" and _data_file(src) and _data_file(dst):
            os._exit(9)

    def unlink(path, *args, **kwargs):
        if _POINT == "unlink" and _data_file(path):
            try:
                shared = os.stat(path).st_nlink > 1
            except OSError:
                shared = False
            if shared:
                os._exit(9)
        _unlink(path, *args, **kwargs)

    os.link, os.replace, os.unlink = link, replace, unlink
