"""The one exception type whose message is shown to the user as is, on one line."""


class InspectionError(Exception):
    """A problem the user can fix: bad input, bad parameter, missing credentials."""
