"""Example instrument configs shipped with the package (see ``xinstrument.config``)."""
