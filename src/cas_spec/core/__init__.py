"""The core: types, interfaces, plugins, configuration and the decoding engine."""
