"""A laptop or a workstation: runs under ~/open_lth_data (or $OPEN_LTH_ROOT)."""

from pathlib import Path

from open_lth.foundations import registries
from open_lth.foundations.platform import Platform, env_root


@registries.platforms.register("local")
class LocalPlatform(Platform):
    @staticmethod
    def default_root() -> Path:
        return env_root(Path.home() / "open_lth_data")
