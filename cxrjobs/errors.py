"""Errors a user can act on. The CLI prints their message without a traceback."""


class CxrError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class ConfigError(CxrError):
    pass


class DataError(CxrError):
    pass


class StoreError(CxrError):
    pass


class RendezvousTimeout(CxrError):
    pass
