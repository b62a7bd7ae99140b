"""Services: one function per operation on users, MCP servers, clients, consents, keys and
second factors. The CLI, the admin console, the account page and the protocol all call these;
none of them carries a rule of its own. Only app/stores/ below writes SQL."""


class Refused(Exception):
    """An operation that is not allowed or not valid; the message is for the person who asked
    (the console shows it, the CLI prints it)."""
