"""The admin console (/admin/...): server-rendered pages for admins only.

Pages: overview, consents, users, clients, MCP servers (resources), signing keys, audit log.
Routes are thin: the work is in app/services/ and the stores; app/admin/pages.py holds what
every page shares (the admin gate, confirmation steps, paging).
"""
