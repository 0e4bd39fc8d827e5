"""The recipes (Hydra config tree). Importing the package registers the typed schemas they name."""

from tguide.config import register_schemas

register_schemas()
