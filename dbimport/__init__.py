"""dbimport: import customer profiles into PostgreSQL from a RabbitMQ queue.

Plugins import `dbimport.api`, the public API; every other module is internal.
"""
