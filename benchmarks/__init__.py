"""Ostiary's own benchmark: `python -m benchmarks.run` (see benchmarks/run.py for usage).

Modules: run.py orchestrates (database, servers, rounds, report); servers.py prepares the
database and starts and stops the processes; targets.py describes the servers under test;
driver.py runs the load (aiohttp on uvloop); protocol.py holds the OAuth requests of one target;
browser.py the HTTP client side (cookies, HTML forms); report.py measures processes and prints
the results; seed.py fills a database in bulk.
"""
