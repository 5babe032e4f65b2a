"""The central service's own database layer: every SQL statement of the central service and of the web monitor's
views of the central DB lives here, one module per table (or group of tables), as named functions.

database.py owns the connection, the schema and its migration (the one place), and the writer (group commit:
callers hand it `fn(conn, *args)`, which call the functions here). Callers pass a connection from
`Database.reader()` or the writer and never write SQL: a second backend replaces this package alone.
Module imports only (no names re-exported here): classify.py imports rules.py while database.py imports
classify.py's seeded rules.
"""
