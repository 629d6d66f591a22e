"""`dbimport-worker` with the test plugins of faults.plugins: `python -m faults.launcher run ...`.

The command line and exit codes are the real ones (dbimport.cli.main); only the
plugin manager the worker builds gets the test plugins on top of the installed ones.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import pluggy

from dbimport import cli, plugins, worker
from faults.plugins import from_environment


def main() -> int:
    extra = from_environment(os.environ)

    def get_plugin_manager(**kwargs: Any) -> pluggy.PluginManager:
        kwargs.setdefault("extra_plugins", extra)
        return plugins.get_plugin_manager(**kwargs)

    worker.get_plugin_manager = get_plugin_manager  # type: ignore[assignment]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
