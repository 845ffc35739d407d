"""YAML as users write numbers: `1e-4` is a float.

PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-4`), so `lr: {loguniform: [1e-4, 1e-2]}`
read as two strings and was refused. This loader also takes YAML 1.2's forms (`1e-4`, `1E5`,
`.5`); everything else is PyYAML's safe loader.
"""

from __future__ import annotations

import re

import yaml


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def safe_load(text: str):
    return yaml.load(text, Loader=_Loader)
